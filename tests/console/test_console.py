"""The console in a real headless Chromium against the real API, projector and worker: sign
in (key form and one-time link), the overview updating live, a task's image, cancelling a
running task, an AGENTIC generation's attempts, and tenant isolation. Writes the screenshots
docs/CONSOLE.md shows (docs/console/*.png)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import expect

from gpu_consumers.storage import tenant_segment
from tests.console.conftest import ConsoleStack
from tests.state.db import generation_helpers as gh
from tests.state.db.helpers import wait_for

WAIT_MS = 30_000
TASK = {"task_type": "IMAGE_ADJUSTER", "base_image_url": "file:///nowhere.png"}


def _submit(stack: ConsoleStack, key: str, prompt: str) -> str:
    resp = httpx.post(f"{stack.base_url}/api/v1/tasks", json={**TASK, "prompt": prompt},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert resp.status_code == 202, resp.text
    return resp.json()["task_id"]


def _signed_in(browser: Any, stack: ConsoleStack, key: str) -> Any:
    """A fresh browser context signed in through the key form."""
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    page.goto(f"{stack.base_url}/console/")
    expect(page.get_by_label("API key (tenant or operator)")).to_be_visible()  # redirected
    page.get_by_label("API key (tenant or operator)").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    return page


def test_sign_in_and_the_overview_updates_live(console: ConsoleStack, browser: Any,
                                              screenshots: Path) -> None:
    _, key = console.key(operator=True)
    page = browser.new_page()
    page.goto(f"{console.base_url}/console/login")
    page.get_by_label("API key (tenant or operator)").fill("csk_nope_wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That API key is unknown or revoked.")
    page.close()

    page = _signed_in(browser, console, key)
    expect(page.locator("#live")).to_contain_text("updated", timeout=WAIT_MS)  # the stream is up
    page.evaluate("window.__notReloaded = true")
    task_id = _submit(console, key, "ok")
    row = page.locator("#types tr[data-type='IMAGE_ADJUSTER']")
    expect(row.locator("[data-k='completed']")).to_have_text("1", timeout=WAIT_MS)
    assert page.evaluate("window.__notReloaded") is True  # updated in place, no reload
    # The operator sees the fleet: the backlog column and the live worker.
    expect(page.locator("#workers tbody tr").first).to_contain_text("IMAGE_ADJUSTER",
                                                                  timeout=WAIT_MS)
    expect(row.locator("[data-k='p50']")).not_to_have_text("-")
    page.screenshot(path=str(screenshots / "overview.png"), full_page=True)
    page.goto(f"{console.base_url}/console/tasks?status=COMPLETED")
    expect(page.locator("#task-list")).to_contain_text(task_id[:8])
    page.context.close()


def test_a_task_page_shows_its_image_and_tenants_see_only_their_own(
        console: ConsoleStack, browser: Any, screenshots: Path) -> None:
    tenant, key = console.key()
    link = httpx.post(f"{console.base_url}/console/login-links",
                      headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert link.status_code == 201, link.text
    task_id = _submit(console, key, "ok")

    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    page.goto(link.json()["url"])  # the one-time login link signs in
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    page.goto(f"{console.base_url}/console/tasks/{task_id}")
    expect(page.locator("#status")).to_have_text("COMPLETED", timeout=WAIT_MS)
    image = page.locator("img.result")
    expect(image).to_have_count(1, timeout=WAIT_MS)  # after the end-of-task reload
    page.wait_for_function("() => { const i = document.querySelector('img.result');"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=WAIT_MS)
    src = image.get_attribute("src")
    assert src == f"/console/tasks/{task_id}/output/0"  # the console's URL, not a storage path
    assert str(console.results_dir) not in page.content()  # no storage path on the page
    expect(page.locator("#timeline li")).to_have_count(4)  # PENDING QUEUED PROCESSING COMPLETED
    page.screenshot(path=str(screenshots / "task.png"), full_page=True)

    # The link was good once; without a session the image is not served at all.
    again = context.new_page().goto(link.json()["url"])
    assert again is not None and again.status == 401
    assert httpx.get(f"{console.base_url}{src}", timeout=10).status_code == 401

    # Another tenant: neither the task page nor its image exist.
    _, other_key = console.key()
    other = _signed_in(browser, console, other_key)
    for path in (f"/console/tasks/{task_id}", src):
        resp = other.goto(f"{console.base_url}{path}")
        assert resp is not None and resp.status == 404, (path, resp and resp.status)
    other.context.close()
    context.close()
    assert tenant  # the tenant's results folder holds the image the page showed
    assert any((console.results_dir / tenant_segment(tenant) / task_id).rglob("*.png"))


def test_cancel_a_running_task_from_its_page(console: ConsoleStack, browser: Any) -> None:
    _, key = console.key()
    task_id = _submit(console, key, "steps:300:0.1")  # 30 s of cancellable steps
    page = _signed_in(browser, console, key)
    page.goto(f"{console.base_url}/console/tasks/{task_id}")
    expect(page.locator("#status")).to_have_text("PROCESSING", timeout=WAIT_MS)  # live
    page.get_by_role("button", name="Cancel task").click()
    expect(page.locator("#status")).to_have_text("CANCELLED", timeout=WAIT_MS)
    expect(page.get_by_role("button", name="Cancel task")).to_have_count(0)
    wait_for(lambda: console.handler.started(task_id).is_set(), what="the task to have run")

    # Retry as a new task: the same parameters under a new id, which runs and is cancelled too.
    page.get_by_role("button", name="Retry as a new task").click()
    expect(page.locator("h1")).not_to_contain_text(task_id)
    retried = page.url.rsplit("/", 1)[1]
    expect(page.locator("#status")).to_have_text("PROCESSING", timeout=WAIT_MS)
    wait_for(lambda: console.handler.started(retried).is_set(), what="the retried task to run")
    page.get_by_role("button", name="Cancel task").click()
    expect(page.locator("#status")).to_have_text("CANCELLED", timeout=WAIT_MS)
    params = httpx.get(f"{console.base_url}/api/v1/tasks/{retried}", timeout=10,
                       headers={"Authorization": f"Bearer {key}"}).json()["params"]
    assert params["prompt"] == "steps:300:0.1"
    page.context.close()


def _png(colour: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", (64, 96), colour)
    for y in range(96):  # a gradient, so the thumbnails are told apart at a glance
        for x in range(0, 64, 8):
            image.putpixel((x, y), (255 - colour[0], y * 2, x * 4))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_an_agentic_generation_shows_each_attempt(console: ConsoleStack, browser: Any,
                                                  screenshots: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    tenant, key = console.key()
    colours = iter([(200, 60, 60), (60, 160, 80), (60, 90, 200)])
    folder = console.results_dir / tenant_segment(tenant)
    record_result = gh.result

    def result(task_id: str) -> dict[str, Any]:  # each attempt's image, in the results root
        path = folder / task_id / "1" / "result.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(next(colours)))
        return {**record_result(task_id), "result_image_url": path.as_uri()}

    monkeypatch.setattr(gh, "result", result)
    record = gh.agentic_record(gh.plan({"strategy": "GENERATE", "generation_type": "AGENTIC",
                                        "subject_id": gh.SUBJECT_ID,
                                        "shot_type_string": "full-body shot", "seed": 7}),
                               tenant=tenant)
    monkeypatch.setattr(gh, "result", record_result)
    gh.produce_records(console.kafka, [record])

    page = _signed_in(browser, console, key)
    page.goto(f"{console.base_url}/console/generations")
    link = page.get_by_role("link", name=record.generation_id[:8])
    expect(link).to_be_visible(timeout=WAIT_MS)  # once the projector has the record
    link.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("GENERATE · AGENTIC")
    attempts = page.locator("li.attempt")
    expect(attempts).to_have_count(3)
    expect(attempts.locator(".score")).to_have_text([f"{s:.2f}" for s in gh.SCORES])
    expect(attempts.locator(".decision")).to_have_text(["RETRY", "RETRY", "ACCEPT_BEST"])
    expect(page.locator("li.attempt.accepted")).to_have_attribute("data-attempt", "2")
    expect(page.locator("li.attempt.accepted .badge")).to_have_text("accepted")
    page.wait_for_function("() => { const t = [...document.querySelectorAll('img.thumb')];"
                           " return t.length === 3 && t.every(i => i.complete && i.naturalWidth === 64); }",
                           timeout=WAIT_MS)
    expect(attempts.nth(0).locator(".reasons")).to_contain_text(gh.REASONS[0][0])
    page.screenshot(path=str(screenshots / "generation.png"), full_page=True)

    _, other_key = console.key()
    other = _signed_in(browser, console, other_key)
    thumb = page.locator("img.thumb").first.get_attribute("src")
    for path in (f"/console/generations/{record.generation_id}", thumb):
        resp = other.goto(f"{console.base_url}{path}")
        assert resp is not None and resp.status == 404, (path, resp and resp.status)
    other.context.close()
    page.context.close()
