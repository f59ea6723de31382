"""Run in a test's subprocess instead of ``python -m processors.cli``: the processors with their
offset commits stuck, the state issue 15 item 2 saw (the fold goes on, one partition's committed
offset does not move).

While the file ``STUCK_COMMITS_FILE`` exists, Faust's commits do nothing. ``STUCK_COMMITS``:
``until-rejoin`` removes the file when the consumer's partitions are revoked (a rejoin clears
the fault, as it clears Faust's acknowledgement bookkeeping); ``forever`` keeps it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from faust.transport import consumer as base
from faust.transport.drivers import aiokafka as driver

_FILE = Path(os.environ["STUCK_COMMITS_FILE"])
_UNTIL_REJOIN = os.environ.get("STUCK_COMMITS") == "until-rejoin"
_commit = driver.AIOKafkaConsumerThread._commit
_revoked = base.Consumer.on_partitions_revoked


async def _stuck_commit(self: Any, offsets: Any) -> bool:
    if _FILE.exists():
        return False
    return await _commit(self, offsets)


async def _on_revoked(self: Any, revoked: Any) -> None:
    if _UNTIL_REJOIN and _FILE.exists():
        print("stuck_commits: partitions revoked; commits work again", flush=True)
        _FILE.unlink()
    await _revoked(self, revoked)


driver.AIOKafkaConsumerThread._commit = _stuck_commit
base.Consumer.on_partitions_revoked = _on_revoked

if __name__ == "__main__":
    from processors.cli import processors

    processors()
