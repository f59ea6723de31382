"""The consumer-group protocol choice (gpu_consumers/group_protocol.py)."""

from __future__ import annotations

import logging

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from gpu_consumers.group_protocol import choose_protocol, client_config_for, heartbeat_for
from schemas.kafka_settings import KafkaSettings


def test_kip848_consumers_are_created_without_the_classic_only_client_settings():
    extra = {"bootstrap.servers": "127.0.0.1:1", "session.timeout.ms": "6000",
             "heartbeat.interval.ms": "1000", "client.id": "w"}
    config = client_config_for("consumer", extra)
    assert config == {"bootstrap.servers": "127.0.0.1:1", "client.id": "w"}
    # librdkafka refuses to create a KIP-848 consumer with them; without them it is created.
    Consumer({**config, "group.id": "g", "group.protocol": "consumer"}).close()
    assert client_config_for("classic", extra) == extra


def test_auto_takes_kip848_where_the_broker_accepts_the_groups_session_timeout(kafka_settings):
    # The local test broker lowers group.consumer.min.session.timeout.ms to 10 s.
    assert choose_protocol(kafka_settings, "auto", [f"{kafka_settings.topic_prefix}-g"], 10_000) == "consumer"
    # Below the broker's floor the group config is refused: classic, with the client's timeout.
    assert choose_protocol(kafka_settings, "auto", [f"{kafka_settings.topic_prefix}-g"], 1_000) == "classic"
    assert choose_protocol(kafka_settings, "classic", ["unused"], 10_000) == "classic"


def test_an_unreachable_broker_falls_back_to_classic():
    nowhere = KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="t")
    assert choose_protocol(nowhere, "auto", ["g"], 10_000, unreachable_wait_s=0) == "classic"


def _group_config(kafka: KafkaSettings, group: str) -> dict[str, str]:
    admin = AdminClient(kafka.client_config())
    resource = ConfigResource(ResourceType.GROUP, group)
    entries = admin.describe_configs([resource])[resource].result(10)
    return {name: entry.value for name, entry in entries.items()}


def test_kip848_groups_heartbeat_every_third_of_their_session(kafka_settings):
    # With the broker's 5 s heartbeat a 10 s session expired after one late heartbeat: both
    # workers of a 100,000-task backlog were fenced on two busy cores.
    group = f"{kafka_settings.topic_prefix}-hb"
    assert choose_protocol(kafka_settings, "auto", [group], 10_000) == "consumer"
    config = _group_config(kafka_settings, group)
    assert config["consumer.session.timeout.ms"] == "10000"
    assert config["consumer.heartbeat.interval.ms"] == str(heartbeat_for(10_000)) == "3333"


def test_a_heartbeat_the_broker_refuses_leaves_the_session_set(kafka_settings, caplog):
    # 60 s / 3 = 20 s is over the broker's group.consumer.max.heartbeat.interval.ms (15 s): the
    # session is still set (KIP-848 kept), the heartbeat stays the broker's, and the log says so.
    group = f"{kafka_settings.topic_prefix}-hb-refused"
    with caplog.at_level(logging.WARNING, logger="gpu_consumers.worker"):
        assert choose_protocol(kafka_settings, "auto", [group], 60_000) == "consumer"
    config = _group_config(kafka_settings, group)
    assert config["consumer.session.timeout.ms"] == "60000"
    assert config["consumer.heartbeat.interval.ms"] == "5000"
    assert "heartbeat interval could not be set to 20000 ms" in caplog.text
