"""A one-time console login link, asked of a running API with a key: what ``make demo`` and
``computectl up`` print (a client of POST /console/login-links; never raises)."""

from __future__ import annotations

import httpx


def console_login_line(api_url: str, key: str, *, timeout_s: float = 10.0) -> str:
    """``console: <url>/console/ - one-time login (10 min): <link>``, or why there is none."""
    try:
        resp = httpx.post(f"{api_url}/console/login-links", timeout=timeout_s,
                          headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        return f"console: {api_url}/console/ (no login link: {type(exc).__name__})"
    if resp.status_code != 201:
        return f"console: {api_url}/console/ (no login link: HTTP {resp.status_code})"
    minutes = round(resp.json()["expires_in_s"] / 60)
    return (f"console: {api_url}/console/ - one-time login ({minutes} min, one use): "
            f"{resp.json()['url']}")
