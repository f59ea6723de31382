"""The batch fold the Faust agent and the benchmark share (pure), and the state document."""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict

import pytest

from processors.folding import (
    BadStatusRecord,
    decode_state,
    encode_state,
    fold_batch,
    read_status,
    state_from_json,
    state_to_json,
)
from schemas.codec import EventCodec
from schemas.enums import TaskStatus
from schemas.errors import DecodeError
from state.lifecycle import fold_all
from tests.processors.scripted import T0, lifecycle, shuffled_with_duplicates, status, submitted

CODEC = EventCodec()


def record(event, partition: int = 0):
    return (event.envelope.task_id.encode(), CODEC.encode(event), partition)


def test_the_state_document_round_trips() -> None:
    rng = random.Random(1)
    for _ in range(50):
        task_id = str(uuid.uuid4())
        state = fold_all(lifecycle(task_id, T0, rng))
        doc = state_to_json(state)
        assert json.loads(encode_state(state)) == doc
        back = state_from_json(doc)
        assert state_to_json(back) == doc
        assert decode_state(encode_state(state)) == back
    assert doc["format"] == 1 and set(doc) >= {"task_id", "status", "attempt", "version", "updated_at"}


def test_a_newer_document_format_is_refused() -> None:
    state = fold_all([status(str(uuid.uuid4()), TaskStatus.QUEUED, T0)])
    with pytest.raises(BadStatusRecord, match="upgrade"):
        state_from_json({**state_to_json(state), "format": 2})


def test_batches_fold_like_the_straight_fold_and_publish_each_task_once_per_batch() -> None:
    rng = random.Random(7)
    events = []
    for _ in range(40):
        events += shuffled_with_duplicates(lifecycle(str(uuid.uuid4()), T0, rng), rng)
    rng.shuffle(events)  # tasks interleaved; each task's own order is already scrambled
    expected = {}
    per_task = defaultdict(list)
    for e in events:
        per_task[e.envelope.task_id].append(e)
    for task_id, evs in per_task.items():
        expected[task_id] = fold_all(evs)

    table: dict[str, bytes] = {}
    published: list[str] = []
    for start in range(0, len(events), 25):
        outcome = fold_batch(CODEC, [record(e, 1) for e in events[start:start + 25]],
                             lambda t: decode_state(table.get(t)))
        assert not outcome.dead
        ids = [c.task_id for c in outcome.changed]
        assert len(ids) == len(set(ids))  # once per batch
        for changed in outcome.changed:
            assert changed.partition == 1
            table[changed.task_id] = changed.document
            published.append(changed.task_id)
    for task_id, state in expected.items():
        assert json.loads(table[task_id]) == state_to_json(state)

    # A replay of everything changes nothing, so publishes nothing.
    again = fold_batch(CODEC, [record(e) for e in events], lambda t: decode_state(table.get(t)))
    assert again.changed == [] and again.dead == []


def test_records_that_cannot_be_folded_are_dead_lettered_and_the_rest_folds() -> None:
    task_id = str(uuid.uuid4())
    good = status(task_id, TaskStatus.QUEUED, T0)
    other = str(uuid.uuid4())
    records = [
        (b"garbage-key", b"not avro at all", 0),
        (task_id.encode(), None, 0),  # a tombstone
        (other.encode(), CODEC.encode(good), 0),  # keyed by another task
        (task_id.encode(), CODEC.encode(submitted(task_id)), 0),  # a task record, not a status
        record(good),
    ]
    outcome = fold_batch(CODEC, records, lambda t: None)
    assert [i for i, _ in outcome.dead] == [0, 1, 2, 3]
    assert isinstance(outcome.dead[0][1], DecodeError)
    assert "keyed" in str(outcome.dead[2][1])
    assert [c.task_id for c in outcome.changed] == [task_id]
    with pytest.raises(BadStatusRecord):
        read_status(CODEC, other, CODEC.encode(good))
