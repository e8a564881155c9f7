"""The other members of the group, as this node talks to them.

One gRPC channel per peer carries both the peer API (petitions, worker lists) and a
``Session`` stream for forwarded calls, with keepalive so that a dead peer's channel
fails within ``keepalive_time_ms + keepalive_timeout_ms`` even when idle. Each peer has a
circuit breaker: after ``circuit_breaker_failure_threshold`` transport failures in a
row, calls to it fail at once for ``circuit_breaker_cooldown_ms``, then one is let
through to probe it. Suspicion is only a hint (the master avoids placing new entities
on a suspect peer); membership in Redis decides who is dead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from aqnode import errors
from aqnode.bus import Envelope, SendResult
from aqnode.client.connection import Connection, ForwardMarks, rpc_error
from aqnode.config import ClusterConfig
from aqnode.v1 import aqnode_pb2 as pb
from aqnode.v1 import aqnode_pb2_grpc as pb_grpc

log = logging.getLogger("aqnode.cluster")


_FAILING = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)


class CircuitBreaker:
    """Closed -> open after ``threshold`` failures in a row -> half-open after
    ``cooldown_s`` (one call through) -> closed on a success, open again on a failure."""

    def __init__(
        self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self._clock() - self.opened_at >= self.cooldown_s:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._probing:
            self._probing = True
            return True
        return False

    def succeeded(self) -> None:
        self.failures, self.opened_at, self._probing = 0, None, False

    def failed(self) -> None:
        self.failures += 1
        self._probing = False
        if self.failures >= self.threshold:
            self.opened_at = self._clock()


class Peer:
    def __init__(
        self,
        server_id: str,
        address: str,
        config: ClusterConfig,
        metadata: tuple[tuple[str, str], ...],
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.server_id = server_id
        self.address = address
        self.config = config
        self._metadata = metadata
        self.breaker = CircuitBreaker(
            config.circuit_breaker_failure_threshold, config.circuit_breaker_cooldown_ms / 1000
        )
        self.session = Connection(
            address,
            metadata,
            options=[
                ("grpc.keepalive_time_ms", config.keepalive_time_ms),
                ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
            ],
            credentials=credentials,
        )
        self._stub = pb_grpc.AqPeerStub(self.session.channel)  # type: ignore[no-untyped-call]
        self._failing_since: float | None = None  # the channel's last fall out of READY
        self._watcher = asyncio.get_running_loop().create_task(self._watch_channel())

    @property
    def suspect(self) -> bool:
        """Its channel has been failing for peer_suspect_debounce_ms (a hint only)."""
        since = self._failing_since
        debounce = self.config.peer_suspect_debounce_ms / 1000
        return since is not None and time.monotonic() - since >= debounce

    @property
    def usable(self) -> bool:
        """Not known to be failing: the breaker is not open and the channel not suspect."""
        return self.breaker.state != "open" and not self.suspect

    async def _watch_channel(self) -> None:
        """Follow the channel's connectivity: a peer whose process died shows up here
        (connection refused, keepalive lost) before its membership expires."""
        channel = self.session.channel
        state = channel.get_state(try_to_connect=False)
        while True:
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=False)
            if state == grpc.ChannelConnectivity.READY:
                self._failing_since = None
            elif state in _FAILING and self._failing_since is None:
                self._failing_since = time.monotonic()
            if state == grpc.ChannelConnectivity.SHUTDOWN:
                return

    def _unreachable(self) -> errors.AqError:
        return errors.Unavailable(
            f"peer {self.server_id} at {self.address} failed "
            f"{self.breaker.failures} times in a row; not calling it for "
            f"{self.config.circuit_breaker_cooldown_ms} ms"
        )

    def _record(self, error: errors.AqError | None) -> None:
        """An answer from the peer (any but UNAVAILABLE, which is the transport's)
        closes its breaker; a transport failure counts against it."""
        if error is None or error.code != errors.UNAVAILABLE:
            self.breaker.succeeded()
        else:
            if self.breaker.state == "closed" and self.breaker.failures + 1 >= (
                self.breaker.threshold
            ):
                log.warning("peer %s at %s is failing: %s", self.server_id, self.address, error)
            self.breaker.failed()

    async def petition(self, epoch: int, me: str, keys: list[str]) -> list[pb.Home]:
        reply = await self._call(
            self._stub.Petition,
            pb.PetitionRequest(epoch=epoch, from_server_id=me, entity_keys=keys),
            self.config.deadlines.forward_ms,
        )
        return list(reply.homes)

    async def list_workers(self, epoch: int, me: str) -> list[str]:
        # Asked again and again while a member starts: not a sign of a failing peer, so
        # it bypasses the breaker (which guards the calls that clients wait on).
        reply = await self._call(
            self._stub.ListWorkers,
            pb.ListWorkersRequest(epoch=epoch, from_server_id=me),
            self.config.deadlines.sync_ms,
            guarded=False,
        )
        return list(reply.entity_keys)

    async def _call(self, method: Any, request: Any, deadline_ms: int, guarded: bool = True) -> Any:
        if guarded and not self.breaker.allow():
            raise self._unreachable()
        error: errors.AqError | None = errors.Unavailable("the call was cancelled")
        try:
            reply = await method(request, timeout=deadline_ms / 1000, metadata=self._metadata)
            error = None
        except grpc.aio.AioRpcError as exc:
            error = rpc_error(exc, self.address)
            raise error from None
        finally:  # every outcome, a cancellation included, settles a half-open probe
            if guarded:
                self._record(error)
        return reply

    def forward(
        self, env: Envelope, *, wait: bool, timeout_ms: int, marks: ForwardMarks
    ) -> asyncio.Future[SendResult]:
        """Post one call to this peer's ``Session`` stream (in order with the others)."""
        if not self.breaker.allow():
            future: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
            future.set_result(
                SendResult(env.message_id, False, error=self._unreachable().to_dict())
            )
            return future
        (future,) = self.session.post([env], wait=wait, timeout_ms=timeout_ms, marks=marks)
        future.add_done_callback(self._forwarded)
        return future

    def _forwarded(self, future: asyncio.Future[SendResult]) -> None:
        if future.cancelled():  # no answer in time: the router gave up on it
            self._record(errors.Unavailable("no answer in time"))
            return
        result = future.result()
        code = "" if result.ok else (result.error or {}).get("code", "")
        self._record(errors.Unavailable("") if code == errors.UNAVAILABLE else None)

    async def close(self) -> None:
        self._watcher.cancel()
        await self.session.close()


class Peers:
    """One :class:`Peer` per other member, made when first needed."""

    def __init__(
        self,
        config: ClusterConfig,
        auth_token: str | None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.config = config
        self._metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        self._credentials = credentials  #: TLS ([tls]: this node's certificate); None: plain
        self._peers: dict[str, Peer] = {}

    def get(self, server_id: str, address: str) -> Peer:
        peer = self._peers.get(server_id)
        if peer is None or peer.address != address:
            if peer is not None:  # it came back at another address
                asyncio.get_running_loop().create_task(peer.close())
            peer = self._peers[server_id] = Peer(
                server_id, address, self.config, self._metadata, self._credentials
            )
        return peer

    def usable(self, server_id: str) -> bool:
        peer = self._peers.get(server_id)
        return peer is None or peer.usable

    def health(self) -> list[tuple[str, bool]]:
        """(server_id, usable) for every peer this node has talked to."""
        return [(sid, peer.usable) for sid, peer in sorted(self._peers.items())]

    async def forget(self, server_id: str) -> None:
        peer = self._peers.pop(server_id, None)
        if peer is not None:
            await peer.close()

    async def close(self) -> None:
        peers, self._peers = list(self._peers.values()), {}
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
