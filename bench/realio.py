"""The ``realio`` scenario: handlers that do real I/O, aqnode against hash-partitioned lists.

Every message (``bench.io_handlers.Deposit``) runs two awaited ``redis.asyncio`` pipelines
against the benchmark's Redis, over one pooled client per process. A workload is
``--entities`` x ``--messages`` (1,000 x 20), round robin (``uniform``); the one-call
senders get ``--sequential-messages`` per entity, as in ``throughput``.

- aqnode (a node with ``handlers = ["bench.io_handlers"]``, ``--shards``, the handler's
  pool of ``--realio-pool`` connections per shard), one sender after the other:
  ``enqueue_many`` (chunks of ``--chunk``), ``sync enqueue`` (one blocking
  ``SyncClient.enqueue`` per message, in a thread so that this event loop stays free),
  ``sequential`` (one ``await Client.enqueue`` per message). Both clients keep the
  default transport ("auto") and are moved to the node's Unix socket before the clock
  runs. When all is sent, one ``IoMarker`` per entity with ``enqueue_and_wait``: FIFO per
  entity means all its Deposits have run when it returns.
- baseline (``bench/lists_baseline.py``): ``--realio-lists`` lists, ``crc32(entity) %
  lists``, one sequential consumer per list in as many processes as the node has
  shards, fed by pipelined LPUSHes (``--chunk`` per round trip); done when the workers'
  shared counter reaches the workload's size.

Each run measures every aqnode sender and the baseline back to back, and the ratio
aqnode / baseline is taken per run. The clock runs from the first send to the last
Marker (aqnode) or the last job done (baseline). Afterwards, out of the clock, the
entities' histories and balances in Redis are read back and compared with what was
sent (``io_handlers.check_history``), on both sides.

``--realio-pools 8,32,0`` also measures ``enqueue_many`` on a node per pool size (0:
unbounded), alternately in each run: which pool size handler authors should use.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from aqnode.client import Client, SyncClient
from bench import io_handlers as ioh
from bench import lists_baseline as lb
from bench.baseline import order_report
from bench.io_handlers import Deposit, IoMarker
from bench.probe import summarize
from bench.procs import NodeProc, NodeSpec, aqnode_serve, settle, wait_ready
from bench.workload import make_workload

if TYPE_CHECKING:
    from bench.run import Bench

SENDERS = ("enqueue_many", "sync enqueue", "sequential")
ONE_PER_CALL = ("sync enqueue", "sequential")
BASELINE = "baseline lists"
WAIT_TIMEOUT_S = 600.0  #: seconds an IoMarker may take (a backed-up queue)
STALL_TIMEOUT_S = 30.0  #: seconds the baseline may make no progress before we give up
NATIVE_TIMEOUT_S = 10.0  #: seconds for a client to move to the node's native socket
AQ_IO_PREFIX = "aqio:"  #: the aqnode handlers' keys (the baseline's: ListsConfig.io_prefix)


@dataclass
class Work:
    """One run's messages and what the handlers must have written for them."""

    deposits: list[Deposit]
    counts: dict[str, int]  #: entity -> Deposits sent to it
    expected: list[tuple[str, list[int], int]]  #: entity, its seqs in order, its amount


def make_work(tag: str, entities: int, per_entity: int) -> Work:
    wl = make_workload(tag, entities, per_entity, "uniform")
    deposits = [Deposit(id=p.id, seq=p.seq, amount=1 + p.seq % 7) for p in wl.pings]
    seqs: dict[str, list[int]] = {eid: [] for eid in wl.counts}
    amounts = dict.fromkeys(wl.counts, 0)
    for d in deposits:
        seqs[d.id].append(d.seq)
        amounts[d.id] += d.amount
    return Work(deposits, wl.counts, [(e, seqs[e], amounts[e]) for e in wl.counts])


def on_native(client: Client, *, upgrade_ok: bool = False) -> bool:
    """Whether ``client`` sends to its node over the native protocol; with
    ``upgrade_ok``, also when its native connection is open but not swapped in yet (a
    SyncClient's own blocking path uses it then). It reads private attributes (no public
    one says): if aqnode renames them, the answer is just False, and the caller warns."""
    conn = getattr(client, "_connections", {}).get(client.address)
    if getattr(conn, "native", False) or type(conn).__name__ == "NativeConnection":
        return True
    upgrade = getattr(client, "_upgrades", {}).get(client.address)
    return upgrade_ok and bool(getattr(upgrade, "connected", False))


async def to_native(client: Client, entity: str) -> None:
    """Make calls until the client has moved to the node's native socket ("auto" moves
    once discovery is done and no call is in flight), or warn at the deadline."""
    deadline = time.monotonic() + NATIVE_TIMEOUT_S
    while not on_native(client) and time.monotonic() < deadline:
        await client.enqueue_and_wait(IoMarker(id=entity), timeout=10.0)
    if not on_native(client):
        print("bench: warning: realio client still on gRPC after warm-up", file=sys.stderr)


def sync_to_native(sync: SyncClient, entity: str) -> None:
    """``to_native`` for a SyncClient, from the calling (non-loop) thread."""
    inner: Client = sync._client
    deadline = time.monotonic() + NATIVE_TIMEOUT_S
    while not on_native(inner, upgrade_ok=True) and time.monotonic() < deadline:
        sync.enqueue_and_wait(IoMarker(id=entity), timeout=10.0)
    if not on_native(inner, upgrade_ok=True):
        print("bench: warning: realio SyncClient still on gRPC after warm-up", file=sys.stderr)


def node_spec(args: Any, url: str, pool: int) -> NodeSpec:
    return NodeSpec(
        f"realio-pool{pool}",
        args.shards,
        args.idle_timeout_ms,
        args.heartbeat_ms,
        f"aqio{pool}",
        handlers="bench.io_handlers",
        entity_type=ioh.ENTITY_TYPE,
        env=((ioh.ENV_URL, url), (ioh.ENV_POOL, str(pool)), (ioh.ENV_PREFIX, AQ_IO_PREFIX)),
    )


@dataclass
class Target:
    """A realio node and an async Client on it."""

    pool: int
    node: NodeProc
    client: Client


class RealIo:
    def __init__(self, bench: Bench) -> None:
        self.b = bench
        self.args = bench.args
        #: reads back what the handlers wrote (made in ``run``, on its loop)
        self.checker: aioredis.Redis | None = None

    # -- aqnode --

    async def aq_run(
        self, t: Target, sync: SyncClient | None, work: Work, sender: str
    ) -> dict[str, float]:
        client, chunk = t.client, self.args.chunk
        deposits = work.deposits
        pids = t.node.pids()
        before = self.b.probe.snapshot(pids)
        if sender == "enqueue_many":
            for start in range(0, len(deposits), chunk):
                await client.enqueue_many(deposits[start : start + chunk])
        elif sender == "sequential":
            enqueue = client.enqueue
            for d in deposits:
                await enqueue(d)
        elif sender == "sync enqueue":
            assert sync is not None

            def send() -> None:
                enqueue = sync.enqueue
                for d in deposits:
                    enqueue(d)

            await asyncio.to_thread(send)
        else:
            raise ValueError(sender)
        acked = time.perf_counter()
        tallies = await asyncio.gather(
            *(client.enqueue_and_wait(IoMarker(id=e), timeout=WAIT_TIMEOUT_S) for e in work.counts)
        )
        after = self.b.probe.snapshot(pids)
        clients = self._connections(pids)
        missing = sum(
            max(0, n - t.deposits) for n, t in zip(work.counts.values(), tallies, strict=True)
        )
        assert self.checker is not None
        written = await ioh.check_history(self.checker, work.expected, AQ_IO_PREFIX)
        return self._metrics(
            before.at,
            acked,
            after.at,
            len(deposits),
            {
                "out_of_order": float(sum(t.out_of_order for t in tallies)),
                "entities_out_of_order": float(sum(1 for t in tallies if t.out_of_order)),
                "overlaps": float(sum(t.overlaps for t in tallies)),
                "missing": float(missing),
                "duplicates": float(
                    sum(
                        max(0, t.deposits - n)
                        for n, t in zip(work.counts.values(), tallies, strict=True)
                    )
                ),
                **written,
                "handler_connections": clients,
                **self.b.probe.costs(before, after, len(deposits)),
            },
        )

    # -- baseline --

    async def baseline_run(
        self, pool: lb.ListsPool, producer: aioredis.Redis, work: Work
    ) -> dict[str, float]:
        total = len(work.deposits)
        pool.reset()
        pids = pool.pids()
        before = self.b.probe.snapshot(pids)
        await lb.produce(producer, pool.config, work.deposits, self.args.chunk)
        acked = time.perf_counter()
        done, progress_at = 0, acked
        while done < total:  # the workers' shared counter, polled with a stall deadline
            now = time.perf_counter()
            if pool.done() > done:
                done, progress_at = pool.done(), now
            elif now - progress_at > STALL_TIMEOUT_S:
                raise SystemExit(
                    f"bench: the lists baseline ran {done} of {total} jobs and then nothing "
                    f"for {STALL_TIMEOUT_S:.0f}s"
                )
            pool.check_alive()
            await asyncio.sleep(0.002)
        after = self.b.probe.snapshot(pids)
        clients = self._connections(pids)
        order = order_report(pool.collect(), work.counts)
        assert self.checker is not None
        written = await ioh.check_history(self.checker, work.expected, pool.config.io_prefix)
        return self._metrics(
            before.at,
            acked,
            after.at,
            total,
            {
                **order,
                **written,
                "handler_connections": clients,
                **self.b.probe.costs(before, after, total),
            },
        )

    def _connections(self, pids: list[int]) -> float:
        """The handler connections these processes have open to Redis (after a run: what
        their pools opened, and keep)."""
        names = {ioh.connection_name(pid) for pid in pids}
        return float(sum(1 for c in self.b.probe.redis.client_list() if c.get("name") in names))

    @staticmethod
    def _metrics(
        t0: float, acked: float, t1: float, n: int, rest: dict[str, float]
    ) -> dict[str, float]:
        # entities whose history list or balance in Redis is not what was sent
        rest["written_bad"] = max(rest.get("history_bad", 0.0), rest.get("balance_bad", 0.0))
        for key in ("out_of_order", "overlaps", "missing", "duplicates", "written_bad"):
            if rest.get(key):
                print(f"bench: warning: realio run with {key} = {rest[key]:.0f}", file=sys.stderr)
        return {
            "messages": float(n),
            "elapsed_s": t1 - t0,
            "msgs_per_s": n / (t1 - t0),
            "acked_s": acked - t0,
            "acked_per_s": n / (acked - t0),
            **rest,
        }

    # -- the scenario --

    @contextlib.contextmanager
    def _nodes(self, pools: list[int]) -> Iterator[dict[int, NodeProc]]:
        with contextlib.ExitStack() as stack:
            yield {
                p: stack.enter_context(
                    aqnode_serve(
                        self.b.workdir,
                        self.b.server.url,
                        node_spec(self.args, self.b.server.url, p),
                    )
                )
                for p in pools
            }

    async def run(self) -> None:
        args, b = self.args, self.b
        main = args.realio_pool
        sweep = [p for p in args.realio_pools if p != main]
        senders = [s for s in SENDERS if b.wanted(f"realio/{s}")]
        with_baseline = b.wanted(f"realio/{BASELINE}")
        if "enqueue_many" not in senders:  # the sweep measures that sender
            sweep = []
        if not senders and not with_baseline and not sweep:
            return
        config = lb.ListsConfig(
            b.server.url,
            processes=args.baseline_processes or args.shards,
            lists=args.realio_lists,
            pool_size=main,
        )
        with contextlib.ExitStack() as stack:
            nodes = stack.enter_context(self._nodes([main, *sweep]))
            pool = None
            if with_baseline:
                pool = lb.ListsPool(config)
                stack.callback(pool.stop)
                pool.start()
                print(
                    f"bench: realio baseline: {config.processes} worker processes, "
                    f"{config.lists} lists (pids {', '.join(map(str, pool.pids()))})",
                    flush=True,
                )
            async with contextlib.AsyncExitStack() as astack:
                targets: dict[int, Target] = {}
                for p, node in nodes.items():
                    await wait_ready(node)
                    client = await astack.enter_async_context(Client(node.address))
                    await to_native(client, f"warm-{p}")
                    targets[p] = Target(p, node, client)
                sync = None
                if "sync enqueue" in senders:
                    sync = await asyncio.to_thread(SyncClient, nodes[main].address)
                    astack.push_async_callback(asyncio.to_thread, sync.close)
                    await asyncio.to_thread(sync_to_native, sync, f"warm-sync-{main}")
                producer = aioredis.Redis.from_url(b.server.url)
                astack.push_async_callback(producer.aclose)
                self.checker = aioredis.Redis.from_url(b.server.url)
                astack.push_async_callback(self.checker.aclose)
                print(
                    f"bench: realio: nodes with handler pools {', '.join(map(str, targets))} "
                    "per shard process (0 = unbounded)",
                    flush=True,
                )
                for run in range(args.runs):
                    await self._one_run(run, targets, main, senders, sync, pool, producer)

    async def _one_run(
        self,
        run: int,
        targets: dict[int, Target],
        main: int,
        senders: list[str],
        sync: SyncClient | None,
        pool: lb.ListsPool | None,
        producer: aioredis.Redis,
    ) -> None:
        args, b = self.args, self.b
        rates: dict[str, float] = {}

        def size(sender: str) -> int:
            return int(args.sequential_messages if sender in ONE_PER_CALL else args.messages)

        async def aq(sender: str, t: Target) -> dict[str, float]:
            await settle(t.client)
            tag = f"io{t.pool}-{sender.replace(' ', '_')}-{run}"
            return await self.aq_run(t, sync, make_work(tag, args.entities, size(sender)), sender)

        # the baseline goes second, so that the node tears its idle workers down meanwhile
        order: list[str] = senders[:1] + ([BASELINE] if pool is not None else []) + senders[1:]
        for name in order:
            if name == BASELINE:
                assert pool is not None
                work = make_work(f"iobl-{run}", args.entities, args.messages)
                metrics = await self.baseline_run(pool, producer, work)
            else:
                metrics = await aq(name, targets[main])
            b.record("realio", f"realio/{name}", metrics, pool=main)
            rates[name] = metrics["msgs_per_s"]
        if len(targets) > 1 and "enqueue_many" in rates:
            for p in args.realio_pools:  # in the order asked for
                if p == main:  # its enqueue_many run above is the figure for its pool size
                    metrics = dict(b.results["realio"]["realio/enqueue_many"]["runs"][run])
                else:
                    metrics = await aq("enqueue_many", targets[p])
                b.record("realio_pools", f"pool {p or 'unbounded'}", metrics, pool=p)
        if BASELINE in rates:
            for sender in senders:
                entry = b.results.setdefault("realio_ratios", {}).setdefault(
                    sender, {"runs": [], "vs": BASELINE}
                )
                entry["runs"].append({"ratio": rates[sender] / rates[BASELINE]})
                entry["summary"] = summarize(entry["runs"])
