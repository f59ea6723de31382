"""The console in a real headless Chromium against the real API, projector and workers: sign
in (key form and one-time link), the overview updating live, a task's image, cancelling a
running task, a real AGENTIC generation's attempts (processors and a GENERATION worker on the
offline models), tenant isolation and the operator's fleet view. Writes the screenshots
docs/CONSOLE.md shows (docs/console/*.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import expect

from gpu_consumers.storage import tenant_segment
from tests.console.conftest import ConsoleStack, save_screenshot
from tests.projection.db.helpers import wait_for

WAIT_MS = 30_000
TASK = {"task_type": "IMAGE_ADJUSTER", "base_image_url": "file:///nowhere.png"}
# The generation was submitted with the stack, so it ran during the tests before: it took 50-90 s
# from its submission on a shared two-core machine (the worker's start-up, torch and the models, included).
AGENTIC_DEADLINE_S = 180.0


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
    _, key = console.key(operator=True, name="ops")
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
    # The operator sees the fleet: the backlog column and the live workers.
    expect(page.locator("#workers tbody tr", has_text="IMAGE_ADJUSTER")).to_have_count(
        1, timeout=WAIT_MS)
    expect(row.locator("[data-k='p50']")).not_to_have_text("-")
    save_screenshot(page, screenshots / "overview.png")
    page.goto(f"{console.base_url}/console/tasks?status=COMPLETED")
    expect(page.locator("#task-list")).to_contain_text(task_id[:8])
    page.context.close()


def test_a_task_page_shows_its_image_and_tenants_see_only_their_own(
        console: ConsoleStack, browser: Any, screenshots: Path) -> None:
    tenant, key = console.key(name="acme")
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
    save_screenshot(page, screenshots / "task.png")

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

    # An operator sees the fleet: every tenant's tasks with their tenant, filtered by tenant,
    # and this tenant's task page and image; acting on it stays the tenant's.
    _, op_key = console.key(operator=True)
    op = _signed_in(browser, console, op_key)
    op.goto(f"{console.base_url}/console/tasks")
    expect(op.locator("#task-list thead")).to_contain_text("Tenant")
    op.get_by_label("Tenant").fill(tenant)
    op.get_by_role("button", name="Filter").click()
    expect(op.locator("#task-list tbody tr")).to_have_count(1)
    expect(op.locator("#task-list td.tenant")).to_have_text(tenant)
    op.get_by_role("link", name=task_id[:8]).click()
    expect(op.locator("#status")).to_have_text("COMPLETED")
    expect(op.locator("#task-tenant")).to_have_text(tenant)
    op.wait_for_function("() => { const i = document.querySelector('img.result');"
                         " return i && i.complete && i.naturalWidth > 0; }", timeout=WAIT_MS)
    expect(op.get_by_role("button", name="Retry as a new task")).to_have_count(0)
    expect(op.locator("#hooks-note")).to_be_visible()  # deliveries: the tenant's only
    op.context.close()


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


def _generation_done(stack: ConsoleStack, key: str, gid: str) -> dict[str, Any] | None:
    stack.children.check_alive()
    resp = httpx.get(f"{stack.base_url}/api/v1/generations/{gid}", params={"wait": 2},
                     headers={"Authorization": f"Bearer {key}"}, timeout=30)
    if resp.status_code == 200 and resp.json()["status"] != "RUNNING":
        return resp.json()
    return None


def test_an_agentic_generation_shows_each_attempt(console: ConsoleStack, browser: Any,
                                                  screenshots: Path) -> None:
    """A real AGENTIC generation: POSTed through the API when the stack started, run by the
    processors (the weight-free quality evaluator) and the GENERATION worker (the offline models
    draw noise, which scores low: the loop retries, then accepts its best), then shown by the
    console as GET /api/v1/generations/{id} has it."""
    key, gid = console.agentic
    try:
        gen = wait_for(lambda: _generation_done(console, key, gid), timeout_s=AGENTIC_DEADLINE_S,
                       what="the AGENTIC generation to end")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{console.children.logs()}") from None
    assert gen["status"] == "COMPLETED", (gen, console.children.logs())
    [prediction] = gen["predictions"]
    shot = prediction["shot"]
    assert shot["done"] and len(shot["attempts"]) >= 1

    page = _signed_in(browser, console, key)
    page.goto(f"{console.base_url}/console/generations")
    page.get_by_role("link", name=gid[:8]).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("GENERATE · AGENTIC")
    attempts = page.locator("li.attempt")
    expect(attempts).to_have_count(len(shot["attempts"]))
    # Each attempt's score and decision are the generation's, as GET /generations/{id} has them.
    expect(attempts.locator(".score")).to_have_text([f"{a['score']:.2f}" for a in shot["attempts"]])
    expect(attempts.locator(".decision")).to_have_text([a["decision"] for a in shot["attempts"]])
    expect(page.locator("li.attempt.accepted")).to_have_attribute(
        "data-attempt", str(shot["accepted_attempt"]))
    expect(page.locator("li.attempt.accepted .badge")).to_have_text("accepted")
    expect(attempts.nth(0).locator(".reasons li").first).to_have_text(shot["attempts"][0]["reasons"][0])
    # Every attempt's image, read through the console from the worker's results root, loads.
    page.wait_for_function("n => { const t = [...document.querySelectorAll('img.thumb')];"
                           " return t.length === n && t.every(i => i.complete && i.naturalWidth > 0); }",
                           arg=len(shot["attempts"]), timeout=WAIT_MS)
    save_screenshot(page, screenshots / "generation.png")

    _, other_key = console.key()
    other = _signed_in(browser, console, other_key)
    thumb = page.locator("img.thumb").first.get_attribute("src")
    for path in (f"/console/generations/{gid}", thumb):
        resp = other.goto(f"{console.base_url}{path}")
        assert resp is not None and resp.status == 404, (path, resp and resp.status)
    other.context.close()
    page.context.close()
