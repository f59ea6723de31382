"""The consumer-group protocol choice (gpu_consumers/group_protocol.py)."""

from __future__ import annotations

from confluent_kafka import Consumer

from gpu_consumers.group_protocol import choose_protocol, client_config_for
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
