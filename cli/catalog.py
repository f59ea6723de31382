"""``computectl catalog add-subject|add-product|add-style|list``: the catalog's entries."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from generations.catalog import CatalogKind
from projection.db.catalog import PostgresCatalog

_database_url = click.option("--database-url", envvar="DATABASE_URL", required=True,
                             help="PostgreSQL URL of the catalog (default: $DATABASE_URL).")


@click.group()
def catalog() -> None:
    """The subjects, products and styles (LoRA and default weight) GENERATE requests use."""


def _add_command(kind: CatalogKind) -> click.Command:
    @click.command(f"add-{kind.value}", help=(
        f"Add a {kind.value} and print its id. Without --lora (or with --lora \"\") the entry has "
        "no LoRA. REF is a name under the workers' LoRA root (the offline profile ships demo/anna, "
        "demo/summer-dress and demo/studio-style) or, in production, an allowed hub repo."))
    @click.argument("name")
    @click.option("--lora", "lora_ref", metavar="REF", help="LoRA reference (default: none).")
    @click.option("--weight", "default_weight", type=click.FloatRange(0.0, 1.0),
                  help="Default LoRA weight, 0..1 (default: none, the worker's own).")
    @click.option("--id", "entry_id", help="Use this UUID instead of a new one.")
    @click.option("--reference", "reference_urls", metavar="URL", multiple=True,
                  help="A reference image of the entry (repeatable, up to 8): EDITING's SUBJECT_SWAP / "
                       "PRODUCT_ENHANCEMENT use it when a request brings none.")
    @_database_url
    def add(name: str, lora_ref: str | None, default_weight: float | None, entry_id: str | None,
            reference_urls: tuple[str, ...], database_url: str) -> None:
        lora_ref = (lora_ref or "").strip() or None  # "" is no LoRA, as leaving --lora out is
        entry = PostgresCatalog(database_url).add(kind, name, lora_ref, default_weight, entry_id,
                                                  reference_urls)
        click.echo(entry.id)

    return add


for _kind in CatalogKind:
    catalog.add_command(_add_command(_kind))


@catalog.command("list")
@click.option("--kind", type=click.Choice([k.value for k in CatalogKind]), help="Only this kind.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_database_url
def list_entries(kind: str | None, as_json: bool, database_url: str) -> None:
    """List the catalog's entries."""
    store = PostgresCatalog(database_url)
    for k in [CatalogKind(kind)] if kind else list(CatalogKind):
        for entry in store.list(k):
            if as_json:
                click.echo(json.dumps({**asdict(entry), "kind": k.value}, default=str))
            else:
                weight = "-" if entry.default_weight is None else f"{entry.default_weight:.2f}"
                click.echo(f"{k.value:8} {entry.id}  {weight:>4}  {entry.name}  ({entry.lora_ref or 'no LoRA'})")
