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


def set_group_session(kafka: KafkaSettings, groups: Iterable[str], session_ms: int) -> str | None:
    """Set each KIP-848 group's session timeout on the broker; None when done, else why not."""
    admin = AdminClient(kafka.client_config())
    resources = [ConfigResource(ResourceType.GROUP, group, incremental_configs=[ConfigEntry(
        "consumer.session.timeout.ms", str(session_ms),
        incremental_operation=AlterConfigOpType.SET)]) for group in groups]
    try:
        for future in admin.incremental_alter_configs(resources).values():
            future.result(_TIMEOUT_S)
    except Exception as exc:  # KafkaException (INVALID_CONFIG, UNSUPPORTED_VERSION...), timeouts
        return f"{type(exc).__name__}: {exc}"
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
