"""The REST API as ``computectl`` calls it: where it is, which key, how an error answer reads.

``COMPUTE_API_URL`` and ``COMPUTE_API_KEY`` name the API and the key; every command that talks
to the API takes them (``--api-url`` / ``--api-key``). The key decides the tenant: what the CLI
submits through the API is that tenant's, and what it reads is only that tenant's.
"""

from __future__ import annotations

import os
from typing import Any

import click

DEFAULT_API_URL = "http://127.0.0.1:8000"


class ApiAnswerError(click.ClickException):
    """The API refused a request (4xx: the message is its problem detail, e.g. a field out of
    range, or a task id not found for the key's tenant) or could not serve it (5xx). Exit 1."""

    def __init__(self, status_code: int, detail: str) -> None:
        self.status_code = status_code
        super().__init__(f"{status_code}: {detail}")


def api_options(fn: Any) -> Any:
    """``--api-url`` and ``--api-key`` (from the environment), the key required."""
    fn = click.option("--api-key", envvar="COMPUTE_API_KEY", required=True,
                      help="An API key (default: $COMPUTE_API_KEY); it decides the tenant.")(fn)
    return click.option("--api-url", envvar="COMPUTE_API_URL", default=DEFAULT_API_URL,
                        show_default=True)(fn)


def api_from_env() -> tuple[str, str] | None:
    """(URL, key) when ``COMPUTE_API_KEY`` is set: then submissions go through the API."""
    key = os.environ.get("COMPUTE_API_KEY")
    return (os.environ.get("COMPUTE_API_URL") or DEFAULT_API_URL, key) if key else None


def api_client(api_url: str, api_key: str) -> Any:
    import httpx

    return httpx.Client(base_url=api_url.rstrip("/"), timeout=httpx.Timeout(10.0, read=90.0),
                        headers={"Authorization": f"Bearer {api_key}"})


def check(resp: Any) -> Any:
    """The answer's JSON; ApiAnswerError with the problem's detail for an error status."""
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        raise ApiAnswerError(resp.status_code, str(detail))
    return resp.json()
