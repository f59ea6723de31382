"""Which consumer-group protocol a worker's groups use, and their session timeout.

Measured in a rebalance storm (bench/bench_rebalance.py, docs/PERFORMANCE.md "Rebalance storm"):
with KIP-848 (``group.protocol=consumer``, Kafka 4.x) a killed worker's partitions were served
again 12 s (median; max 23 s) after the kill and the workers kept up with the submit rate,
against 46 s (max 109 s) and half the rate with the classic protocol at the same 10 s session
timeout, whose every join stops the group until the dead member's session expires and a second
cooperative round hands its partitions out. So ``auto`` (the default) takes KIP-848
whenever the broker lets this group's session timeout be ``session_timeout_ms`` (a GROUP config,
``consumer.session.timeout.ms``; the broker's floor ``group.consumer.min.session.timeout.ms`` is
45 s unless its operator lowers it), and the classic protocol with that session timeout
otherwise (an older broker, a higher floor, no ALTER_CONFIGS right on the group): a dead member
then still costs one session timeout, not the 45 s both protocols default to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from schemas.kafka_settings import KafkaSettings

log = logging.getLogger("gpu_consumers.worker")

_TIMEOUT_S = 10.0
_RETRY_S = 2.0
# Errors that say the broker did not answer (rather than refused): worth asking again.
_UNREACHABLE = ("_TRANSPORT", "_TIMED_OUT", "_ALL_BROKERS_DOWN", "TimeoutError", "_RESOLVE")
# Client settings KIP-848 refuses (the broker's group.consumer.* configs govern): librdkafka will
# not create the consumer with them.
_CLASSIC_ONLY = ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy",
                 "group.protocol.type")

Protocol = Literal["classic", "consumer"]


def _unreachable(why: str) -> bool:
    return any(marker in why for marker in _UNREACHABLE)


def _alter_groups(admin: AdminClient, groups: Iterable[str], configs: dict[str, int]) -> None:
    resources = [ConfigResource(ResourceType.GROUP, group, incremental_configs=[
        ConfigEntry(name, str(value), incremental_operation=AlterConfigOpType.SET)
        for name, value in configs.items()]) for group in groups]
    for future in admin.incremental_alter_configs(resources).values():
        future.result(_TIMEOUT_S)


def heartbeat_for(session_ms: int) -> int:
    """The heartbeat interval a session of ``session_ms`` needs: a third of it, as the classic
    protocol's rule, so that one late heartbeat (a busy broker, a stalled machine) does not
    expire the session."""
    return max(100, session_ms // 3)


def set_group_session(kafka: KafkaSettings, groups: Iterable[str], session_ms: int) -> str | None:
    """Set each KIP-848 group's session timeout on the broker, and its heartbeat interval to a
    third of it; None when the session timeout is set, else why not.

    The broker's own heartbeat interval (``group.consumer.heartbeat.interval.ms``, 5 s) with a
    10 s session leaves one heartbeat of margin: in a 100,000-task backlog on two cores both
    workers were fenced (UNKNOWN_MEMBER_ID, partitions lost) within a second of each other, and
    their finished but uncommitted tasks were checked one by one (docs/PERFORMANCE.md). Where the
    broker's floor (``group.consumer.min.heartbeat.interval.ms``, 5 s by default) refuses a third
    of the session, the session alone is set and the worker says so."""
    groups = list(groups)
    admin = AdminClient(kafka.client_config())
    heartbeat = heartbeat_for(session_ms)
    try:
        _alter_groups(admin, groups, {"consumer.session.timeout.ms": session_ms,
                                      "consumer.heartbeat.interval.ms": heartbeat})
        return None
    except Exception as exc:  # KafkaException (INVALID_CONFIG, UNSUPPORTED_VERSION...), timeouts
        why = f"{type(exc).__name__}: {exc}"
    if _unreachable(why):
        return why
    try:
        _alter_groups(admin, groups, {"consumer.session.timeout.ms": session_ms})
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    log.warning("the groups' heartbeat interval could not be set to %d ms (%s): the broker's "
                "group.consumer.heartbeat.interval.ms applies, and a %d ms session may expire "
                "after one late heartbeat (lower group.consumer.min.heartbeat.interval.ms on the "
                "broker, or raise WORKER_SESSION_TIMEOUT_MS)", heartbeat, why, session_ms)
    return None


def choose_protocol(kafka: KafkaSettings, wanted: str, groups: list[str], session_ms: int,
                    *, unreachable_wait_s: float = 60.0,
                    stop: Callable[[], bool] = lambda: False) -> Protocol:
    """``classic`` or ``consumer`` for ``wanted`` (``auto``, ``classic``, ``consumer``); for
    ``consumer`` (chosen or asked for) the groups' session timeout is set on the broker.

    A broker that does not answer is asked again for up to ``unreachable_wait_s`` (a worker
    started with its broker restarting would otherwise settle on classic beside KIP-848 peers)."""
    if wanted == "classic":
        return "classic"
    deadline = time.monotonic() + unreachable_wait_s
    while True:
        why = set_group_session(kafka, groups, session_ms)
        if why is None or not _unreachable(why) or time.monotonic() >= deadline or stop():
            break
        time.sleep(_RETRY_S)
    if why is None:
        return "consumer"
    if wanted == "consumer":
        log.warning("group.protocol=consumer, but the groups' session timeout could not be set "
                    "to %d ms (%s): a dead worker keeps its partitions for the broker's "
                    "group.consumer.session.timeout.ms", session_ms, why)
        return "consumer"
    log.info("consumer-group protocol: classic with a %d ms session (KIP-848 not used: the "
             "broker did not take the groups' session timeout: %s)", session_ms, why)
    return "classic"


def client_config_for(protocol: Protocol, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (KafkaSettings.client_config(), with KAFKA_CLIENT_EXTRA) without the settings
    the KIP-848 protocol refuses; a dropped one is logged (WORKER_SESSION_TIMEOUT_MS sets the
    group's session timeout instead)."""
    if protocol != "consumer":
        return config
    dropped = [k for k in _CLASSIC_ONLY if k in config]
    if dropped:
        log.warning("group.protocol=consumer: ignoring %s from the client settings (the broker "
                    "governs them; WORKER_SESSION_TIMEOUT_MS sets the group's session timeout)",
                    ", ".join(dropped))
    return {k: v for k, v in config.items() if k not in _CLASSIC_ONLY}


def group_config(protocol: Protocol, session_timeout_ms: int) -> dict[str, Any]:
    """The consumer settings of a worker group's member under ``protocol``."""
    if protocol == "consumer":
        # KIP-848: the broker assigns (incrementally); its group.consumer.* configs and the
        # group's own consumer.session.timeout.ms (choose_protocol) set session and heartbeat.
        return {"group.protocol": "consumer"}
    return {
        # Cooperative rebalancing: a joining worker takes partitions without stopping the
        # others' running tasks.
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(100, session_timeout_ms // 3),
    }
