"""docker-compose.yml: valid Compose, and the topology the rest of the system expects.

Validity: with the `docker compose` plugin, `docker compose config -q` decides; without it
(no Docker on the machine), the file is checked against the Compose Specification's JSON
schema vendored in tests/data (see tests/data/README.md). Either way the semantic checks below
run: they assert what no schema can (one shared image, every dependency defined, GPUs
reserved, every setting the app reads present and consistent with the infrastructure).
No test here needs a Docker engine, and none is skipped.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from schemas.enums import TaskType

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"
CLUSTER_ENV_FILE = ROOT / "compose-cluster.env"
KAFKA_NODES = ("kafka", "kafka-2", "kafka-3")

# The services that run our image, and the computectl command each one runs.
APP_COMMANDS: dict[str, list[str]] = {
    "topics": ["topics", "create"],
    "migrate": ["db", "migrate"],
    "processors": ["processors"],
    "projector": ["projector"],
    "api": ["api"],
    "worker-gpu": ["worker"],
    "worker-cpu": ["worker"],
}
ONE_SHOT_APP_SERVICES = {"topics", "migrate"}
GPU_TYPES = {
    "generation", "editing", "refine", "video_generation",
    "background_fix", "face_enhancer", "detail_enhancer",
}
CPU_TYPES = {"image_adjuster", "background_remove", "llm_interaction"}
# Every environment variable the application reads from its environment in compose.
APP_ENV_VARS = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "SCHEMA_REGISTRY_URL",
    "DATABASE_URL",
    "S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "RESULTS_URL",
    "MODEL_PROFILE",
)


# ------------------------------------------------------------------------------- helpers

def load_compose() -> dict[str, Any]:
    """The file as Compose sees it before interpolation (YAML anchors and `<<` merged)."""
    with COMPOSE_FILE.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    assert isinstance(data, dict), "docker-compose.yml must be a YAML mapping"
    return data


_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's variable interpolation (`${X}`, `${X:-d}`, `${X-d}`, `${X:?e}`, `$X`, `$$`)
    with an empty shell environment unless given: what an operator gets with no `.env`."""
    env = env or {}

    def repl(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if current is not None else arg
        if op in (":?", "?"):
            assert current, f"${{{name}}} is required: {arg}"
            return current
        assert current is not None, f"${name} has no default: set one with ${{{name}:-...}}"
        return current

    return _VAR.sub(repl, value)


def env_of(service: dict[str, Any], shell: dict[str, str] | None = None) -> dict[str, str]:
    """A service's environment as a dict of interpolated strings (list or mapping form), with
    ``shell`` as the variables Compose interpolates from (none unless given)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {k: interpolate(str(v), shell) if v is not None else "" for k, v in raw.items()}


def read_env_file(path: Path) -> dict[str, str]:
    """A Compose env file (KEY=VALUE lines, # comments)."""
    pairs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.strip()
    return pairs


def depends_on_of(service: dict[str, Any]) -> dict[str, str]:
    """depends_on as {target: condition}; the short list form means service_started."""
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {name: "service_started" for name in raw}
    return {name: spec.get("condition", "service_started") for name, spec in raw.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def worker_types(service: dict[str, Any]) -> set[str]:
    cmd = command_of(service)
    assert cmd[:1] == ["worker"], cmd
    if "--types" in cmd:
        value = cmd[cmd.index("--types") + 1]
    else:
        (value,) = [c.split("=", 1)[1] for c in cmd if c.startswith("--types=")]
    return {t.strip() for t in value.split(",") if t.strip()}


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def schema_errors(document: Any) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.path)))
    ]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose.get("services")
    assert isinstance(svcs, dict) and svcs, "no services defined"
    return svcs


# ------------------------------------------------------------------------------- validity

def test_compose_file_is_valid() -> None:
    if docker_compose_available():
        result = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, (
            f"docker compose config rejected docker-compose.yml:\n{result.stderr}{result.stdout}"
        )
    else:
        errors = schema_errors(load_compose())
        assert errors == [], "docker-compose.yml breaks the Compose Specification:\n" + "\n".join(
            errors
        )


def test_vendored_schema_is_the_compose_specification() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert schema["title"] == "Compose Specification"
    assert schema["$id"] == "compose_spec.json"
    service_props = schema["definitions"]["service"]["properties"]
    for key in ("image", "build", "depends_on", "deploy", "healthcheck", "environment"):
        assert key in service_props, key
    readme = (SCHEMA_FILE.parent / "README.md").read_text(encoding="utf-8")
    assert "compose-spec.json" in readme and "Apache-2.0" in readme


@pytest.mark.parametrize(
    ("what", "mutate"),
    [
        ("unknown service key", lambda d: d["services"]["api"].update(imagee="x")),
        ("unknown top-level key", lambda d: d.update(servics={})),
        (
            "unknown depends_on condition",
            lambda d: d["services"]["api"]["depends_on"]["kafka"].update(condition="ready"),
        ),
        (
            "device capabilities not a list",
            lambda d: d["services"]["worker-gpu"]["deploy"]["resources"]["reservations"][
                "devices"
            ][0].update(capabilities="gpu"),
        ),
        ("healthcheck with a bad key", lambda d: d["services"]["kafka"]["healthcheck"].update(
            tests=["CMD", "true"])),
    ],
)
def test_schema_check_rejects_broken_files(what: str, mutate: Any) -> None:
    """The schema branch is not vacuous: each broken variant of our file is rejected."""
    broken = copy.deepcopy(load_compose())
    mutate(broken)
    assert schema_errors(broken), f"schema accepted a file with an {what}"


# ------------------------------------------------------------------------------- semantics

def test_app_services_share_one_image_and_build(compose: dict, services: dict) -> None:
    shared = compose.get("x-app")
    assert isinstance(shared, dict), "the shared `x-app` definition is missing"
    image, build = shared.get("image"), shared.get("build")
    assert image and build, "x-app must define both image and build"
    assert set(APP_COMMANDS) <= set(services), set(APP_COMMANDS) - set(services)
    for name in APP_COMMANDS:
        assert services[name].get("image") == image, f"{name} does not use the shared image"
        assert services[name].get("build") == build, f"{name} does not use the shared build"
    builders = {name for name, svc in services.items() if "build" in svc}
    assert builders == set(APP_COMMANDS), f"services building a second image: {builders}"

    context = ROOT / build["context"]
    dockerfile = context / build["dockerfile"]
    assert dockerfile.is_file(), dockerfile
    text = dockerfile.read_text(encoding="utf-8")
    assert re.search(r'^ENTRYPOINT \["computectl"\]\s*$', text, re.M), "ENTRYPOINT must be computectl"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for heavy in (".venv", ".cache", ".git"):
        assert heavy in ignore, f".dockerignore must exclude {heavy}"


def test_app_services_run_the_right_commands(services: dict) -> None:
    for name, prefix in APP_COMMANDS.items():
        cmd = command_of(services[name])
        assert cmd[: len(prefix)] == prefix, f"{name} runs {cmd}, expected computectl {prefix}"
    api_ports = [str(p) for p in services["api"].get("ports", [])]
    assert any(p.endswith(":8000") for p in api_ports), api_ports
    assert "0.0.0.0" in command_of(services["api"]), "the API must listen beyond localhost"


def test_every_depends_on_target_exists_and_can_be_met(services: dict) -> None:
    for name, svc in services.items():
        for target, condition in depends_on_of(svc).items():
            assert target in services, f"{name} depends on undefined service {target}"
            assert target != name, f"{name} depends on itself"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], (
                    f"{name} waits for {target} to be healthy, but {target} has no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", (
                    f"{name} waits for {target} to complete, but {target} restarts"
                )

    # No cycles: a topological order exists.
    remaining = {n: set(depends_on_of(s)) for n, s in services.items()}
    while remaining:
        ready = [n for n, deps in remaining.items() if not deps & remaining.keys()]
        assert ready, f"depends_on cycle among {sorted(remaining)}"
        for n in ready:
            del remaining[n]


def test_long_running_app_services_wait_for_the_platform(services: dict) -> None:
    for name in set(APP_COMMANDS) - ONE_SHOT_APP_SERVICES:
        deps = depends_on_of(services[name])
        assert deps.get("kafka") == "service_healthy", name
        assert deps.get("postgres") == "service_healthy", name
        assert deps.get("topics") == "service_completed_successfully", name
        assert deps.get("migrate") == "service_completed_successfully", name
        assert deps.get("minio-init") == "service_completed_successfully", name
        assert services[name].get("restart") == "unless-stopped", name
    for name in ONE_SHOT_APP_SERVICES | {"minio-init"}:
        assert services[name].get("restart") == "no", f"{name} is one-shot"


def test_gpu_worker_reserves_nvidia_devices(services: dict) -> None:
    devices = (
        services["worker-gpu"].get("deploy", {}).get("resources", {})
        .get("reservations", {}).get("devices", [])
    )
    nvidia = [d for d in devices if d.get("driver") == "nvidia"]
    assert nvidia, "worker-gpu reserves no nvidia device"
    assert any(d.get("count") == "all" and "gpu" in d.get("capabilities", []) for d in nvidia)
    assert "deploy" not in services["worker-cpu"], "the CPU worker must not require a GPU"


def test_workers_cover_every_task_type_once(services: dict) -> None:
    workers = {n: worker_types(s) for n, s in services.items() if command_of(s)[:1] == ["worker"]}
    assert workers["worker-gpu"] == GPU_TYPES
    assert workers["worker-cpu"] == CPU_TYPES
    all_types = [t for types in workers.values() for t in types]
    assert len(all_types) == len(set(all_types)), "a task type is served by two worker services"
    assert set(all_types) == {t.slug for t in TaskType}, "every task type needs a worker"


def test_every_app_service_gets_every_setting(services: dict) -> None:
    for name in APP_COMMANDS:
        env = env_of(services[name])
        missing = [k for k in APP_ENV_VARS if not env.get(k)]
        assert not missing, f"{name} lacks {missing}"
        assert env["RESULTS_URL"] == "s3://compute-results/", name
        assert env["MODEL_PROFILE"] == "production", name


def test_app_settings_point_at_the_infrastructure(services: dict) -> None:
    env = env_of(services["api"])

    kafka = env_of(services["kafka"])
    advertised = kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    internal = {a.split("://", 1)[1] for a in advertised}
    assert env["KAFKA_BOOTSTRAP_SERVERS"] in internal, (env["KAFKA_BOOTSTRAP_SERVERS"], internal)
    assert "kafka:" in env["KAFKA_BOOTSTRAP_SERVERS"], "containers must use the in-network listener"
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, "KRaft"
    assert not any("ZOOKEEPER" in k for k in kafka), "KRaft mode has no ZooKeeper"

    assert env["SCHEMA_REGISTRY_URL"] == "http://schema-registry:8081"

    pg = env_of(services["postgres"])
    expected_db = (
        f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/"
        f"{pg['POSTGRES_DB']}"
    )
    assert env["DATABASE_URL"] == expected_db

    minio = env_of(services["minio"])
    assert env["S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    assert len(minio["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses passwords under 8 characters"

    bucket = env["RESULTS_URL"].removeprefix("s3://").strip("/")
    init = services["minio-init"]
    assert init["image"].startswith("minio/mc"), init["image"]
    assert env_of(init)["RESULTS_BUCKET"] == bucket
    script = " ".join(command_of(init))
    assert "mc mb" in script and "RESULTS_BUCKET" in script, "minio-init must create the bucket"


def test_infrastructure_images_and_healthchecks(services: dict) -> None:
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    assert services["schema-registry"]["image"].startswith("confluentinc/cp-schema-registry:")
    assert services["postgres"]["image"] == "postgres:15"
    assert services["minio"]["image"].startswith("minio/minio:")
    for name in ("kafka", "schema-registry", "postgres", "minio", "api"):
        check = services[name].get("healthcheck", {})
        assert check.get("test"), f"{name} needs a healthcheck"
        assert not check.get("disable"), name
    kafka_ports = [str(p) for p in services["kafka"].get("ports", [])]
    assert any(p.endswith(":9092") for p in kafka_ports), "Kafka needs a host listener"


def test_named_volumes_are_declared_and_used(compose: dict, services: dict) -> None:
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            source = vol.get("source") if isinstance(vol, dict) else str(vol).split(":", 1)[0]
            if source and not source.startswith((".", "/", "~", "$")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
                used.add(source)
    assert {"kafka-data", "postgres-data", "minio-data"} <= used
    assert declared == used, f"declared but unused volumes: {declared - used}"


# ------------------------------------------------------------------------------- cluster profile

def active_services(services: dict, profiles: set[str]) -> set[str]:
    """What `docker compose up` starts with ``profiles`` on: services without a profile, and
    those with one of them."""
    return {n for n, svc in services.items() if not svc.get("profiles") or set(svc["profiles"]) & profiles}


def test_default_profile_is_one_broker(services: dict) -> None:
    started = active_services(services, set())
    assert {"kafka", "kafka-2", "kafka-3"} & started == {"kafka"}
    kafka = env_of(services["kafka"])
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:29093"
    for key in ("KAFKA_DEFAULT_REPLICATION_FACTOR", "KAFKA_MIN_INSYNC_REPLICAS",
                "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert kafka[key] == "1", key
    app = env_of(services["api"])
    assert (app["KAFKA_REPLICATION_FACTOR"], app["KAFKA_MIN_INSYNC_REPLICAS"]) == ("1", "1")


def test_cluster_profile_is_three_kraft_nodes_rf3_min_isr2(compose: dict, services: dict) -> None:
    shell = read_env_file(CLUSTER_ENV_FILE)
    profiles = set(shell["COMPOSE_PROFILES"].split(","))
    assert profiles == {"cluster"}
    assert set(KAFKA_NODES) <= active_services(services, profiles)
    for name in ("kafka-2", "kafka-3"):
        assert services[name]["profiles"] == ["cluster"], name

    nodes = {name: env_of(services[name], shell) for name in KAFKA_NODES}
    assert sorted(int(env["KAFKA_NODE_ID"]) for env in nodes.values()) == [1, 2, 3]
    assert len({env["CLUSTER_ID"] for env in nodes.values()}) == 1, "one cluster id"
    controllers = {}
    for name, env in nodes.items():
        assert services[name]["image"] == "apache/kafka:4.1.1", name
        assert services[name].get("hostname") == name, name
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, name
        listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
        controllers[int(env["KAFKA_NODE_ID"])] = f"{name}:{listeners['CONTROLLER'].lstrip(':')}"
        assert f"INTERNAL://{name}:29092" in env["KAFKA_ADVERTISED_LISTENERS"].split(","), name
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2", name
        for internal in ("OFFSETS_TOPIC", "TRANSACTION_STATE_LOG", "SHARE_COORDINATOR_STATE_TOPIC"):
            assert env[f"KAFKA_{internal}_REPLICATION_FACTOR"] == "3", (name, internal)
        for internal in ("TRANSACTION_STATE_LOG", "SHARE_COORDINATOR_STATE_TOPIC"):
            assert env[f"KAFKA_{internal}_MIN_ISR"] == "2", (name, internal)
        assert services[name]["healthcheck"]["test"], name
    # The static quorum: every node names the same three voters, at their controller listeners.
    voters = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in nodes.values()}
    assert voters == {",".join(f"{i}@{controllers[i]}" for i in (1, 2, 3))}

    # Each node its own data volume and host port.
    volumes = [services[n]["volumes"][0].split(":", 1)[0] for n in KAFKA_NODES]
    assert len(set(volumes)) == 3 and set(volumes) <= set(compose["volumes"])
    host_ports = [interpolate(str(services[n]["ports"][0]), shell).split(":")[0] for n in KAFKA_NODES]
    assert len(set(host_ports)) == 3, host_ports

    # The app reaches all three and creates its topics with RF 3 / min ISR 2.
    for name in APP_COMMANDS:
        app = env_of(services[name], shell)
        assert sorted(app["KAFKA_BOOTSTRAP_SERVERS"].split(",")) == sorted(f"{n}:29092" for n in KAFKA_NODES), name
        assert (app["KAFKA_REPLICATION_FACTOR"], app["KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2"), name
    registry = env_of(services["schema-registry"], shell)
    assert registry["SCHEMA_REGISTRY_KAFKASTORE_TOPIC_REPLICATION_FACTOR"] == "3"


def test_cluster_env_names_only_variables_the_file_uses() -> None:
    """A typo in compose-cluster.env would silently leave the single-broker default."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for key in read_env_file(CLUSTER_ENV_FILE):
        if key != "COMPOSE_PROFILES":
            assert "${" + key + ":-" in text, key


def test_kafka_nodes_let_workers_use_kip848_as_the_local_stack_does(services: dict) -> None:
    # WORKER_GROUP_PROTOCOL=auto takes KIP-848 only where the broker accepts the workers' 10 s
    # session (gpu_consumers/group_protocol.py); compose's brokers must allow what the local
    # stack's broker allows, or the compose workers fall back to classic at 45 s.
    from devstack.kafka import TEST_BROKER_PROPS

    for prop in ("group.consumer.min.session.timeout.ms", "group.consumer.min.heartbeat.interval.ms"):
        name = "KAFKA_" + prop.upper().replace(".", "_")
        for node in KAFKA_NODES:
            assert env_of(services[node]).get(name) == TEST_BROKER_PROPS[prop], (node, name)


def test_the_image_copies_every_package_the_project_installs() -> None:
    """The app image runs `pip install .` on what the Dockerfile copied: a package missing there
    is missing in every container (after the layout of issue 16 it copied five of ten, so
    `computectl` could not even import its root)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    dockerfile = (ROOT / "gpu_consumers" / "Dockerfile").read_text(encoding="utf-8")
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, flags=re.MULTILINE))
    assert copied == packages, f"Dockerfile copies {sorted(copied)}, pyproject lists {sorted(packages)}"
