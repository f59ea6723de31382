"""``computectl catalog add-*`` on the real PostgreSQL: a LoRA is optional (as the catalog's
tables allow, docs/GENERATIONS.md), ``--lora ""`` means none, and a reference is kept as given."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import cli
from generations.catalog import CatalogKind
from projection.db.catalog import PostgresCatalog
from projection.db.migrate import migrate
from tests.projection.db.helpers import fresh_database

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("args, lora_ref, weight", [
    ([], None, None),
    (["--lora", ""], None, None),
    (["--lora", "  "], None, None),
    (["--lora", "demo/anna", "--weight", "0.8"], "demo/anna", 0.8),
])
def test_add_subject_with_or_without_a_lora(database_url, args, lora_ref, weight):
    with fresh_database(database_url) as db_url:
        migrate(db_url)
        made = CliRunner().invoke(cli, ["catalog", "add-subject", "Anna", *args],
                                  env={"DATABASE_URL": db_url})
        assert made.exit_code == 0, made.output
        entry = PostgresCatalog(db_url).get(CatalogKind.SUBJECT, made.stdout.strip())
        assert (entry.name, entry.lora_ref, entry.default_weight) == ("Anna", lora_ref, weight)


def test_add_subject_refuses_a_weight_out_of_range(database_url):
    made = CliRunner().invoke(cli, ["catalog", "add-subject", "Anna", "--weight", "1.5"],
                              env={"DATABASE_URL": database_url})
    assert made.exit_code == 2 and "--weight" in made.output


def test_add_product_with_reference_images(database_url):
    with fresh_database(database_url) as db_url:
        migrate(db_url)
        made = CliRunner().invoke(cli, ["catalog", "add-product", "Dress", "--reference", "s3://catalog/front.png",
                                        "--reference", "s3://catalog/back.png"], env={"DATABASE_URL": db_url})
        assert made.exit_code == 0, made.output
        store = PostgresCatalog(db_url)
        entry = store.get(CatalogKind.PRODUCT, made.stdout.strip())
        assert entry.reference_urls == ("s3://catalog/front.png", "s3://catalog/back.png")
        assert store.list(CatalogKind.PRODUCT) == [entry]
