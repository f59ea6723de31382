"""computectl commands of the read model: apikey, db, status --follow, tasks."""

from __future__ import annotations

import json

import click
import httpx
import pytest
from click.testing import CliRunner

from cli.server import add_state_commands
from generations.plan import GenerationRequested
from schemas.enums import TaskStatus, TaskType
from tests.api.conftest import ApiStack, Tenant
from tests.api.helpers import run_task, submit, wait_status
from tests.kafka_helpers import read_topic, wait_for
from tests.projection.db.helpers import fresh_database, table

pytestmark = pytest.mark.integration


@pytest.fixture
def cli() -> click.Group:
    group = click.Group("computectl")
    add_state_commands(group)
    return group


def test_apikey_create_list_revoke(api: ApiStack, cli: click.Group, client: httpx.Client) -> None:
    runner = CliRunner()
    db = ["--database-url", api.db_url]
    created = runner.invoke(cli, ["apikey", "create", "--tenant", "cli-tenant", "--name", "ci",
                                  "--json", *db])
    assert created.exit_code == 0, created.output
    key = json.loads(created.stdout)
    auth = {"Authorization": f"Bearer {key['key']}"}
    assert client.get("/api/v1/tasks", headers=auth).status_code == 200
    listed = runner.invoke(cli, ["apikey", "list", "--tenant", "cli-tenant", "--json", *db])
    assert [k["key_id"] for k in json.loads(listed.stdout)] == [key["key_id"]]
    assert key["key"] not in listed.stdout  # secrets are never listed
    revoked = runner.invoke(cli, ["apikey", "revoke", key["key_id"], *db])
    assert revoked.exit_code == 0
    wait_for(lambda: client.get("/api/v1/tasks", headers=auth).status_code == 401,
             "the revoked key to be refused (its NOTIFY drops it from the API's cache)", timeout_s=5)
    again = runner.invoke(cli, ["apikey", "revoke", key["key_id"], *db])
    assert again.exit_code != 0 and "no active key" in again.output


def test_apikey_create_operator(api: ApiStack, cli: click.Group, client: httpx.Client) -> None:
    runner = CliRunner()
    db = ["--database-url", api.db_url]
    made = {}
    for kind in ("tenant", "operator"):
        flags = ["--operator"] if kind == "operator" else []
        created = runner.invoke(cli, ["apikey", "create", "--tenant", "cli-ops", *flags, "--json", *db])
        assert created.exit_code == 0, created.output
        made[kind] = json.loads(created.stdout)
        assert made[kind]["operator"] is (kind == "operator")
    listed = {k["key_id"]: k["operator"] for k in json.loads(
        runner.invoke(cli, ["apikey", "list", "--tenant", "cli-ops", "--json", *db]).stdout)}
    assert listed == {made["tenant"]["key_id"]: False, made["operator"]["key_id"]: True}
    for kind, code in (("tenant", 403), ("operator", 200)):
        auth = {"Authorization": f"Bearer {made[kind]['key']}"}
        assert client.get("/metrics", headers=auth).status_code == code
        assert client.get("/api/v1/tasks", headers=auth).status_code == 200  # both are tenant keys
    text = runner.invoke(cli, ["apikey", "list", "--tenant", "cli-ops", *db]).stdout
    assert "operator" in text and "tenant" in text


def test_status_follow_and_tasks(api: ApiStack, cli: click.Group, client: httpx.Client,
                                 tenant: Tenant) -> None:
    tid = submit(client, tenant, {"task_type": "FACE_ENHANCER", "base_image_url": "file:///f.png"}).json()["task_id"]
    wait_status(client, tenant, tid, "QUEUED")
    run_task(api, tenant, tid, TaskType.FACE_ENHANCER, (TaskStatus.PROCESSING, 0.5),
             (TaskStatus.COMPLETED, None))
    runner = CliRunner()
    env = {"COMPUTE_API_URL": api.base_url, "COMPUTE_API_KEY": tenant.key}
    followed = runner.invoke(cli, ["status", tid, "--follow", "--json"], env=env)
    assert followed.exit_code == 0, followed.output
    assert json.loads(followed.stdout.strip().splitlines()[-1])["status"] == "COMPLETED"
    listed = runner.invoke(cli, ["tasks", "--status", "COMPLETED", "--json"], env=env)
    assert [t["task_id"] for t in json.loads(listed.stdout)["items"]] == [tid]
    missing = runner.invoke(cli, ["status", "00000000-0000-0000-0000-000000000000"], env=env)
    assert missing.exit_code != 0 and "404" in missing.output


def test_db_migrate_and_rebuild(api: ApiStack, cli: click.Group, database_url: str) -> None:
    runner = CliRunner()
    migrated = runner.invoke(cli, ["db", "migrate", "--database-url", api.db_url])
    assert migrated.exit_code == 0 and "up to date" in migrated.output
    env = {"KAFKA_BOOTSTRAP_SERVERS": api.kafka.bootstrap_servers,
           "KAFKA_TOPIC_PREFIX": api.kafka.topic_prefix, "KAFKA_PARTITIONS": "2"}
    with fresh_database(database_url) as target:
        rebuilt = runner.invoke(cli, ["db", "rebuild", "--database-url", target], env=env)
        assert rebuilt.exit_code == 0, rebuilt.output
        assert "replayed" in rebuilt.output
        # The module's tasks so far, as the live projection has them (it is caught up: every
        # earlier test waited for its rows).
        live = table(api.db_url, "tasks", "task_id")
        assert table(target, "tasks", "task_id") == live


def test_submit_and_generate_with_a_key_are_the_keys_tenants(api: ApiStack, client: httpx.Client,
                                                             tenant: Tenant, other_tenant: Tenant) -> None:
    """With COMPUTE_API_KEY set, `computectl submit` and `generate` go through the API: the task
    and the generation are the key's tenant's (status and tasks see the task), and another
    tenant's key reads "not found for tenant <its own>"."""
    from cli.main import cli as computectl

    runner = CliRunner()
    env = {"COMPUTE_API_URL": api.base_url, "COMPUTE_API_KEY": tenant.key,
           "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}  # nothing listens there: not used
    made = runner.invoke(computectl, ["submit", "face_enhancer", "-p", "base_image_url=file:///f.png",
                                      "-p", "strength=0.5", "--entity-id", "order-9", "--origin-version", "cli-1",
                                      "--output", "json"], env=env)
    assert made.exit_code == 0, made.output
    tid = json.loads(made.stdout)["task_id"]
    queued = wait_status(client, tenant, tid, "QUEUED")
    assert queued["origin"]["tenant_id"] == tenant.name
    assert (queued["entity_id"], queued["origin"]["version"]) == ("order-9", "cli-1")
    listed = runner.invoke(computectl, ["tasks", "--json"], env=env)
    assert [t["task_id"] for t in json.loads(listed.stdout)["items"]] == [tid]
    shown = runner.invoke(computectl, ["status", tid, "--json"], env=env)
    assert shown.exit_code == 0 and json.loads(shown.stdout)["status"] == "QUEUED"

    foreign = runner.invoke(computectl, ["status", tid], env={**env, "COMPUTE_API_KEY": other_tenant.key})
    assert foreign.exit_code == 1
    assert f"no task {tid} for tenant {other_tenant.name}" in foreign.output
    refused = runner.invoke(computectl, ["submit", "face_enhancer", "-p", "base_image_url=file:///f.png",
                                         "-p", "strength=5"], env=env)
    assert refused.exit_code == 1 and "422" in refused.output and "strength" in refused.output
    both = runner.invoke(computectl, ["submit", "llm_interaction", "-p", "prompt=x", "--tenant", "t"], env=env)
    assert both.exit_code == 2 and "--tenant" in both.output

    started = runner.invoke(computectl, ["generate", "face_fixing", "-p", "base_image_url=file:///f.png",
                                         "--output", "json"], env=env)
    assert started.exit_code == 0, started.output
    summary = json.loads(started.stdout)
    [msg] = read_topic(api.kafka, api.kafka.topics.generations, expect=1)
    request = GenerationRequested.model_validate_json(msg.value())
    assert request.plan.generation_id == summary["generation_id"]
    assert request.origin_tenant_id == tenant.name


class _Answers:
    """A client whose GETs answer the given status codes in turn (the last one repeats)."""

    def __init__(self, *codes: int) -> None:
        self.codes, self.calls = list(codes), 0

    def get(self, path: str) -> httpx.Response:
        code = self.codes[min(self.calls, len(self.codes) - 1)]
        self.calls += 1
        return httpx.Response(code, json={"detail": "no task"}, request=httpx.Request("GET", path))


def test_follow_waits_for_a_just_submitted_task_to_appear(monkeypatch) -> None:
    """The read model follows the topics: a 202'd task may be a 404 for a moment, and
    `status --follow` right after `submit` (the README's quickstart) must not give up on it."""
    import cli.server as state_cli

    monkeypatch.setattr(state_cli, "APPEAR_POLL_S", 0.0)
    appearing = _Answers(404, 404, 200)
    assert state_cli._appeared(appearing, "t").status_code == 200 and appearing.calls == 3
    monkeypatch.setattr(state_cli, "APPEAR_TIMEOUT_S", 0.0)
    never = _Answers(404)
    assert state_cli._appeared(never, "t").status_code == 404  # an unknown id still ends as 404
    other = _Answers(401)
    assert state_cli._appeared(other, "t").status_code == 401 and other.calls == 1
