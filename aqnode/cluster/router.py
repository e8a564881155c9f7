"""Where a call goes in cluster mode: this node's log, the owner's, or the master first.

The router answers the core's one question, "may this call be logged here?": yes when
this node owns the entity; otherwise it takes the call and sends it on. An entity whose
owner this node does not know waits (with every later call for it, in order) for the
master's answer to a petition; nothing is ever delivered speculatively. A call for an
entity another node owns is forwarded on that peer's ordered stream, so the calls of
one sender for one entity reach the owner's log in the order sent, and the owner's
answer (acknowledgement, reply, handler error) goes back to the caller as it came, with
the owner's address as a hint for clients that route by themselves.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import msgspec

from aqnode import errors
from aqnode.bus import SendResult
from aqnode.client.connection import ForwardMarks
from aqnode.cluster.membership import ClusterState
from aqnode.cluster.peers import Peers
from aqnode.config import ClusterConfig

if TYPE_CHECKING:
    from aqnode.supervisor.live import Call

log = logging.getLogger("aqnode.cluster")

#: codes after which a petition is asked again (the master is changing or rebuilding)
PETITION_RETRY_CODES = frozenset({errors.UNAVAILABLE, errors.MASTER_REBUILDING, errors.STALE_EPOCH})
PETITION_BATCH = 1000  #: entity keys asked in one petition
REROUTE_DELAY_S = 0.1  #: a call an owner refused for a stale epoch goes round again after
MAX_REROUTES = 30  #: ... at most this often (3 s: a failover's length) before it fails
FORWARD_GRACE_MS = 2000  #: a forwarded wait's deadline past the caller's own timeout

#: asks the master (by RPC, or in-process when this node is the master) where each key lives
AskMaster = Callable[[int, list[str]], Awaitable[list[tuple[str, str]]]]


class Router:
    def __init__(
        self,
        server_id: str,
        config: ClusterConfig,
        state: Callable[[], ClusterState],
        peers: Peers,
        ask_master: AskMaster,
        resubmit: Callable[[list[Call]], None],
        reply_timeout_ms: Callable[[str], int],
        next_tokens: Callable[[int], Awaitable[int]] | None = None,
    ) -> None:
        self.server_id = server_id
        self.config = config
        self._state = state
        self._peers = peers
        self._ask_master = ask_master
        self._resubmit = resubmit
        self._reply_timeout_ms = reply_timeout_ms  # an entity type's reply_timeout_ms
        self._next_tokens = next_tokens or _counting()
        #: owned entity -> its fencing token here (ctx.fencing_token)
        self.tokens: dict[str, int] = {}
        self.owned: set[str] = set()  #: entities this node owns
        self.homes: dict[str, str] = {}  #: entity key -> server_id of its owner (a cache)
        #: owned entities whose moved messages (adoption) are still arriving
        self.adopting: set[str] = set()
        self._waiting: dict[str, list[Call]] = {}  #: calls behind a petition, in order
        self._to_ask: list[str] = []
        self._petitions = asyncio.Semaphore(config.max_concurrent_petitions)
        self._tasks: set[asyncio.Task[None]] = set()
        self._order = itertools.count(1)  #: arrival order, kept through reroutes
        self.forwarded = 0  #: calls sent on to an owner
        self.petitioned = 0  #: entity keys asked of the master

    # ---- the core's question ----------------------------------------------------------

    def take(self, call: Call, key: str) -> bool:
        """True: log ``call`` here. False: the router has taken it (forwarded, or waiting
        for its owner). Raises an AqError for a call that must be refused."""
        state = self._state()
        if call.epoch and call.epoch != state.epoch:
            raise errors.StaleEpoch(
                f"{self.server_id} is at epoch {state.epoch} and a peer forwarded this call "
                f"at epoch {call.epoch}; the peer sends it again once both see the same master"
            )
        if not call.order:
            call.order = next(self._order)
        if call.adopted and call.epoch:
            # The master moves a dead node's message here: this node owns the entity now.
            # Until the last moved message has come, its other calls wait here (the
            # master holds them elsewhere), so that none overtakes a moved one.
            self.owned.add(key)
            self.homes.pop(key, None)
            if call.fencing_token:
                self.tokens[key] = call.fencing_token
            if call.adopted_last:
                self.adoption_done(key)
            else:
                self.adopting.add(key)
            return True
        if key in self.adopting and not call.adopted:
            self._waiting.setdefault(key, []).append(call)
            return False
        waiting = self._waiting.get(key)
        if waiting is not None and not call.adopted:  # behind a petition: keep its place
            waiting.append(call)
            return False
        if key in self.owned:
            return True
        home = self.homes.get(key)
        if home is not None:
            self._forward(call, key, home, state)
            return False
        self._waiting[key] = [call]
        self._ask(key)
        return False

    def token(self, key: str) -> int:
        return self.tokens.get(key, 0)

    def placed(self, key: str, owner: str, token: int = 0) -> None:
        """The master (this node) gave ``key`` to ``owner`` (adoption moves its messages;
        :meth:`adoption_done` follows)."""
        if owner == self.server_id:
            self.owned.add(key)
            self.adopting.add(key)
            self.tokens[key] = token
        else:
            self.owned.discard(key)
            self.homes[key] = owner

    def adoption_done(self, key: str) -> None:
        """Every moved message of ``key`` is in its owner's log: its held calls go on,
        after the one being admitted now (call_soon: the same commit order)."""
        self.adopting.discard(key)
        calls = self._waiting.pop(key, None) if key in self.owned else None
        if calls:
            asyncio.get_running_loop().call_soon(self._resubmit, calls)

    async def claim(self, keys: list[str]) -> None:
        """Entities this node runs already (its log's, at start): it owns them, with new
        fencing tokens (a new process is a new owner)."""
        self.owned.update(keys)
        await self._take_tokens(keys)

    async def _take_tokens(self, keys: list[str]) -> None:
        if not keys:
            return
        last = await self._next_tokens(len(keys))
        for i, key in enumerate(keys):
            self.tokens[key] = last - len(keys) + 1 + i

    def report(self) -> list[str]:
        """For a new master's rebuild: what this node owns. What it had cached of other
        owners dates from the old master and is forgotten."""
        self.homes.clear()
        return sorted(self.owned)

    def on_view(self, state: ClusterState, changed_epoch: bool) -> None:
        if changed_epoch:
            self.homes.clear()
            # A new master: an adoption the old one left unfinished is done again by the
            # new one, which holds those entities itself; nothing waits here for it.
            for key in list(self.adopting):
                self.adoption_done(key)
            return
        alive = {m.server_id for m in state.members if m.alive}
        for key in [k for k, owner in self.homes.items() if owner not in alive]:
            del self.homes[key]

    # ---- petitions --------------------------------------------------------------------

    def _ask(self, key: str) -> None:
        self._to_ask.append(key)
        if len(self._to_ask) == 1:
            asyncio.get_running_loop().call_soon(self._send_petitions)

    def _send_petitions(self) -> None:
        keys, self._to_ask = self._to_ask, []
        for i in range(0, len(keys), PETITION_BATCH):
            self._spawn(self._petition(keys[i : i + PETITION_BATCH]))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _petition(self, keys: list[str]) -> None:
        """Ask the master until it answers at the current epoch, for up to a failover's
        length; then the waiting calls fail with the last reason."""
        cfg = self.config
        pause = 0.05
        self.petitioned += len(keys)
        async with self._petitions:
            deadline = time.monotonic() + (cfg.node_ttl_ms + cfg.leader_debounce_ms + 1000) / 1000
            while True:
                epoch = self._state().epoch
                try:
                    homes = await self._ask_master(epoch, keys)
                    if self._state().epoch == epoch:
                        # New here: a fencing token each, before any of their calls runs.
                        await self._take_tokens(
                            [k for k, o in homes if o == self.server_id and k not in self.owned]
                        )
                        break
                    continue  # the master changed while it answered: ask the new one
                except errors.AqError as exc:
                    if exc.code in PETITION_RETRY_CODES and time.monotonic() < deadline:
                        await asyncio.sleep(pause)
                        pause = min(pause * 2, 0.4)
                        continue
                    self._fail_waiting(keys, exc)
                    return
                except Exception as exc:  # a bug: the calls fail, saying so; the node goes on
                    log.exception("a petition failed")
                    self._fail_waiting(keys, errors.AqError(f"asking the master failed: {exc!r}"))
                    return
        for key, owner in homes:
            if owner == self.server_id:
                self.owned.add(key)
            else:
                self.homes[key] = owner
            calls = self._waiting.pop(key, [])
            if calls:
                self._resubmit(calls)  # through the core again: now it knows where

    def _fail_waiting(self, keys: list[str], error: errors.AqError) -> None:
        for key in keys:
            for call in self._waiting.pop(key, []):
                call.reply(SendResult(call.envelope.message_id, False, error=error.to_dict()))

    # ---- forwarding -------------------------------------------------------------------

    def _forward(self, call: Call, key: str, owner: str, state: ClusterState) -> None:
        max_hops = self.config.max_forward_hops  # 0: unbounded
        if max_hops and call.hops >= max_hops:
            raise errors.ForwardHopsExceeded(
                f"{key} was forwarded {call.hops} times without reaching its owner "
                f"(max_forward_hops = {self.config.max_forward_hops}); the group's view "
                "of it is changing: retry shortly"
            )
        address = next((m.address for m in state.members if m.server_id == owner), "")
        if not address:  # not a member any more: ask the master again
            self.homes.pop(key, None)
            self._waiting[key] = [call]
            self._ask(key)
            return
        peer = self._peers.get(owner, address)
        env = call.envelope
        timeout_ms = 0
        if call.wait:  # the owner applies the timeout; this node waits a little longer
            timeout_ms = min(
                call.timeout_ms or self._reply_timeout_ms(env.entity_type),
                self.config.deadlines.and_wait_ms,
            )
            deadline_ms = timeout_ms + FORWARD_GRACE_MS
        else:
            deadline_ms = self.config.deadlines.forward_ms
        self.forwarded += 1
        marks = ForwardMarks(
            state.epoch, call.hops + 1, call.adopted, call.adopted_last, call.fencing_token
        )
        future = peer.forward(env, wait=call.wait, timeout_ms=timeout_ms, marks=marks)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(deadline_ms / 1000, self._forward_timed_out, future, call, peer)
        future.add_done_callback(lambda f: self._forwarded(f, call, key, address, timer))

    def _forwarded(
        self,
        future: asyncio.Future[SendResult],
        call: Call,
        key: str,
        address: str,
        timer: asyncio.TimerHandle,
    ) -> None:
        timer.cancel()
        if future.cancelled():
            return  # timed out: the caller was answered then
        result = future.result()
        code = (result.error or {}).get("code") if not result.ok else None
        if code == errors.STALE_EPOCH and call.reroutes < MAX_REROUTES:
            # The owner and this node see different masters: nothing was written there.
            # The call waits for the master's answer again, ahead of every later call
            # for its entity (those that went after it come back the same way, in order).
            call.reroutes += 1
            self.homes.pop(key, None)
            waiting = self._waiting.get(key)
            if waiting is None:
                self._waiting[key] = [call]
                asyncio.get_running_loop().call_later(REROUTE_DELAY_S, self._ask, key)
            else:
                bisect.insort(waiting, call, key=lambda c: c.order)
            return
        if code == errors.UNAVAILABLE:
            mid = call.envelope.message_id
            result = SendResult(
                mid,
                False,
                error=errors.Unavailable(
                    f"the owner of {key} ({address}) did not answer: {result.error.get('message')}"
                    f"; message {mid} may or may not be enqueued there: send it again with "
                    f"message_id={mid!r} to be sure it runs exactly once",
                    message_id=mid,
                ).to_dict()
                if result.error
                else None,
            )
        if not result.owner:
            result = msgspec.structs.replace(result, owner=address)
        call.reply(result)

    def _forward_timed_out(
        self, future: asyncio.Future[SendResult], call: Call, peer: object
    ) -> None:
        if future.done():
            return
        future.cancel()
        mid = call.envelope.message_id
        kind = "reply" if call.wait else "acknowledgement"
        call.reply(
            SendResult(
                mid,
                False,
                error=errors.Unavailable(
                    f"the node that owns this entity gave no {kind} in time; message {mid} may "
                    f"or may not be enqueued there: send it again with message_id={mid!r} to "
                    "be sure it runs exactly once",
                    message_id=mid,
                ).to_dict(),
            )
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _counting() -> Callable[[int], Awaitable[int]]:
    """Fencing tokens without Redis (tests of the router alone)."""
    taken = 0

    async def next_tokens(count: int) -> int:
        nonlocal taken
        taken += count
        return taken

    return next_tokens
