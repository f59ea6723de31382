"""The processors' tables on disk (processors/disk_store.py): a mapping that behaves as the
memory store's dict, the memory store's changelog and rebalance rules, private files per process,
and the app's tables on it by default. The app on a real broker with this store is what every
other test under tests/processors runs (it is the default)."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from faust.types import TP

from processors import disk_store
from processors.app import _faust_settings
from processors.disk_store import DiskMap, Store, remove_stale_files
from processors.settings import ProcessorSettings
from processors.transport import ProcessorsApp
from schemas.kafka_settings import KafkaSettings


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[DiskMap]:
    store = DiskMap(tmp_path / f"t-{os.getpid()}.sqlite3")
    yield store
    store.close()


def test_random_operations_agree_with_a_dict(disk: DiskMap, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disk_store, "WRITES_PER_TRANSACTION", 7)  # commits inside the run too
    rng, model = random.Random(19), {}
    keys = [f"task-{i}" for i in range(40)]
    for step in range(3000):
        key, op = rng.choice(keys), rng.random()
        if op < 0.5:
            value = f"{key}@{step}".encode()
            disk[key] = model[key] = value
        elif op < 0.7:
            assert disk.pop(key, None) == model.pop(key, None)
        elif op < 0.8 and key in model:
            del disk[key], model[key]
        else:
            assert disk.get(key) == model.get(key)
            assert (key in disk) is (key in model)
    assert dict(disk.items()) == model and len(disk) == len(model)
    with pytest.raises(KeyError):
        del disk["absent"]
    with pytest.raises(KeyError):
        disk["absent"]
    disk.clear()
    assert len(disk) == 0 and list(disk) == []


def test_changelog_batches_keep_the_last_record_of_a_key_and_delete_on_tombstones(disk: DiskMap) -> None:
    disk["live"] = b"written by the agent"
    disk.apply([("a", 0, b"1"), ("b", 1, b"1"), ("a", 0, b"2"), ("b", 1, None),
                ("c", 2, None), ("c", 2, b"back"), ("live", 3, b"recovered")])
    assert dict(disk.items()) == {"a": b"2", "c": b"back", "live": b"recovered"}


def test_recovery_completion_drops_other_partitions_but_keeps_live_writes(disk: DiskMap) -> None:
    disk.apply([("p0", 0, b"x"), ("p1", 1, b"x"), ("p2", 2, b"x")])
    disk["new"] = b"live"  # first written live: no partition known, kept (the memory store's rule)
    disk["p2"] = b"updated live"  # keeps partition 2 from its recovery
    disk.keep_partitions({0})
    assert dict(disk.items()) == {"p0": b"x", "new": b"live"}
    disk.keep_partitions(set())  # no partition left: only live writes stay
    assert dict(disk.items()) == {"new": b"live"}


def test_files_are_private_to_a_process_and_cleaned_after_it(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = tmp_path / f"tasks-{gone.stdout.strip()}.sqlite3"
    mine = tmp_path / f"tasks-{os.getpid()}.sqlite3"
    alive = tmp_path / "tasks-1.sqlite3"  # pid 1 is alive
    for path in (dead, mine, alive):
        path.write_bytes(b"")
    remove_stale_files(tmp_path)
    assert not dead.exists() and mine.exists() and alive.exists()
    store = DiskMap(mine)  # a file left by this pid (an earlier run) is started afresh
    store["k"] = b"v"
    store.close()
    assert not mine.exists()


def test_the_app_keeps_every_table_on_disk_by_default(tmp_path: Path) -> None:
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9")
    settings = ProcessorSettings(datadir=tmp_path)
    assert settings.store == "disk://"
    app = ProcessorsApp("disk-store-test", fetch_min_bytes=1, fetch_max_wait_ms=1,
                        **_faust_settings(kafka, settings, "disk-store-test"))
    table = app.Table("tasks", partitions=3, key_type=str, value_type=bytes)
    assert isinstance(table.data, Store)
    table.data["t-1"] = b"state"  # the agents' write path: straight to the store
    assert table.data.get("t-1") == b"state" and "t-1" in table.data
    assert Path(table.data.data.path).parent == Path(app.conf.tabledir)
    events = [SimpleNamespace(key=k, value=v, message=SimpleNamespace(partition=p, value=v))
              for k, p, v in ((b"t-2", 1, b"s2"), (b"t-3", 2, b"s3"))]
    table.data.apply_changelog_batch(events, lambda k: k.decode(),  # type: ignore[arg-type]
                                     lambda v: v)
    assert table.data.persisted_offset(TP("x", 1)) is None  # always recovered from the changelog
    asyncio.run(table.data.on_recovery_completed({TP("x", 1)}, set()))
    assert dict(table.data.data.items()) == {"t-1": b"state", "t-2": b"s2"}
