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


def _odd_pool(sent: list[Any]) -> WorkerPool:
    cfg = parse_config('handlers = ["tests.handlers.odd_errors"]\nshards = 1\n')
    import_handler_modules(cfg.handlers)
    return WorkerPool(cfg, build_catalogue({}), sent.append, None)  # type: ignore[arg-type]


def _run_in_order(prefix: str, names: list[str]) -> list[Any]:
    """Deliver odd_errors messages of one entity, already `dispatched`, and return what
    the pool sent once each has its outcome (or after 2 s)."""

    async def main() -> list[Any]:
        sent: list[Any] = []
        pool = _odd_pool(sent)
        payload = msgspec.msgpack.encode({"key": "k"})
        for i, name in enumerate(names):
            pool.deliver(ipc.Deliver(f"{prefix}{i}", "odd", name, "k", payload, 0.0, 1, True))
        for _ in range(200):
            if len([x for x in sent if isinstance(x, ipc.Outcome)]) == len(names):
                break
            await asyncio.sleep(0.01)
        return sent

    return asyncio.run(main())


def test_odd_failures_give_each_message_one_outcome_and_one_run() -> None:
    """Bug: an exception whose __str__ raised killed the worker before the outcome was
    reported, and every later message of the entity re-ran the first one."""
    from tests.handlers import odd_errors

    odd_errors.RUNS.clear()
    items = _run_in_order("m", ["BadStr", "Exit", "WrongReply", "Fine", "BadStr", "Fine"])
    outcomes = [x for x in items if isinstance(x, ipc.Outcome)]
    assert [o.message_id for o in outcomes] == [f"m{i}" for i in range(6)]
    assert odd_errors.RUNS == ["BadStr", "Exit", "WrongReply", "Fine", "BadStr", "Fine"]
    assert [o.ok for o in outcomes] == [False, False, False, True, False, True]
    bad_str, leave, wrong = (o.error or {} for o in outcomes[:3])
    assert bad_str["code"] == "HANDLER_ERROR" and "Unprintable" in bad_str["remote_type"]
    assert "__str__ raised" in bad_str["remote_message"]
    assert leave["code"] == "HANDLER_ERROR" and leave["remote_type"] == "SystemExit"
    assert wrong["code"] == "HANDLER_ERROR" and "reply type Reply" in wrong["message"]
    started = [x.message_id for x in items if isinstance(x, ipc.Started)]
    assert started == [f"m{i}" for i in range(6)]  # each said Started once, before its run


def test_a_delivered_message_without_a_dispatched_mark_is_never_run_twice() -> None:
    """The permit: one `dispatched` mark, one run, whatever happens around it."""

    async def main() -> None:
        pool = _odd_pool(sent)
        item = ipc.Deliver("m1", "odd", "Fine", "k", msgspec.msgpack.encode({"key": "k"}), 0.0)
        item.dispatched = True
        first = await pool._run_once(item)
        second = await pool._run_once(item)  # the same item again, its permit spent
        assert first.ok and not second.ok
        assert second.error is not None and "without a dispatched mark" in second.error["message"]

    from tests.handlers import odd_errors

    sent: list[Any] = []
    odd_errors.RUNS.clear()
    asyncio.run(main())
    assert odd_errors.RUNS == ["Fine"]


def test_a_handler_cancelling_its_own_task_costs_nothing_to_the_messages_after_it() -> None:
    from tests.handlers import odd_errors

    odd_errors.RUNS.clear()
    sent = _run_in_order("c", ["CancelAndReturn", "Fine", "CancelAndSwallow", "Fine"])
    outcomes = [x for x in sent if isinstance(x, ipc.Outcome)]
    assert [o.message_id for o in outcomes] == ["c0", "c1", "c2", "c3"]
    assert [o.ok for o in outcomes] == [True, True, True, True]
    assert odd_errors.RUNS == ["CancelAndReturn", "Fine", "CancelAndSwallow", "Fine"]
