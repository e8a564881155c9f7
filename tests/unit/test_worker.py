"""The shard's entity workers, driven directly with IPC items (no processes)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from aqnode import ipc
from aqnode.catalogue import build_catalogue, import_handler_modules
from aqnode.config import parse_config
from aqnode.shard.worker import WorkerPool


def test_a_handler_leaking_cancelled_error_fails_its_message_and_the_entity_goes_on() -> None:
    async def main() -> list[Any]:
        cfg = parse_config('handlers = ["tests.handlers.cancelling"]\nshards = 1\n')
        import_handler_modules(cfg.handlers)
        pool = WorkerPool(cfg, build_catalogue({}), sent.append, None)  # type: ignore[arg-type]
        payload = msgspec.msgpack.encode({"key": "t1"})
        pool.deliver(ipc.Deliver("m1", "thing", "Boom", "t1", payload, 0.0, 1, True))
        pool.deliver(ipc.Deliver("m2", "thing", "Fine", "t1", payload, 0.0, 1, True))
        for _ in range(100):
            if len([x for x in sent if isinstance(x, ipc.Outcome)]) == 2:
                break
            await asyncio.sleep(0.01)
        return sent

    sent: list[Any] = []
    outcomes = [x for x in asyncio.run(main()) if isinstance(x, ipc.Outcome)]
    assert [o.message_id for o in outcomes] == ["m1", "m2"]
    assert not outcomes[0].ok and outcomes[0].error is not None
    assert outcomes[0].error["remote_type"] == "asyncio.exceptions.CancelledError"
    assert outcomes[1].ok
