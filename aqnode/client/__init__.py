"""The Python client (SPEC section 4): ``Client`` (asyncio) and ``SyncClient`` (blocking).

The client keeps one long-lived ``Session`` stream per node. Calls made in the same
event-loop tick travel in one frame, and frames go out in call order, so a sender that
fires many ``enqueue`` calls without awaiting each one still gets FIFO and group commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from aqnode import errors
from aqnode.api import Message
from aqnode.bus import (
    Bus,
    EntityBus,
    Envelope,
    SendResult,
    envelope_of,
    timeout_ms_of,
    typed_decode,
)
from aqnode.client.blocking import NotSent, ThreadConnections
from aqnode.client.connection import (
    MAX_CALL_BYTES,
    Connection,
    check_size,
    rpc_error,
    status_error,
)
from aqnode.client.status import Member, NodeStatus, ShardStatus
from aqnode.client.tls import Tls, credentials_for
from aqnode.native import is_native
from aqnode.registry import Snapshot, decode_snapshot
from aqnode.validation import Validator

if TYPE_CHECKING:
    from aqnode.client.native import NativeConnection

__all__ = [
    "MAX_CALL_BYTES",
    "Client",
    "Member",
    "NodeStatus",
    "ShardStatus",
    "Snapshot",
    "SyncClient",
    "SyncEntityClient",
    "Tls",
    "rpc_error",
    "status_error",
]

T = TypeVar("T")
NO_TIMEOUT_WAIT_S = 3600.0  #: seconds; a wait with no timeout relies on the node's default
SEND_TIMEOUT_S = 30.0  #: seconds an enqueue waits for the node to acknowledge it
CONNECT_TIMEOUT_S = 1.0  #: seconds connect() gives each node of several to answer
TIMEOUT_GRACE_S = 2.0  #: seconds the client waits past a timeout for the node to say so
REGISTRY_TIMEOUT_S = 5.0  #: seconds validate=True waits for the node's registry
DISCOVERY_TIMEOUT_S = 2.0  #: seconds to learn and open a node's native endpoint
CLOSE_WAIT_S = 1.0  #: seconds close() waits for background work it cancelled
#: "auto": the native protocol wherever the node offers it (its Unix socket on the same
#: host, else its native_listen), gRPC until it is open; "grpc": gRPC only
TRANSPORTS = ("auto", "grpc")
#: validate=True: a message the registry does not know makes the client read it again,
#: at most this often (seconds), before it refuses the message as the node would
REGISTRY_RECHECK_S = 1.0


class Client(Bus):
    """``async with Client("127.0.0.1:50051") as bus: await bus.enqueue(msg)``.

    ``address`` is one ``HOST:PORT``, several separated by commas, or a list: the nodes
    of one service group. The client sends to the first that answers and moves to the
    next when it goes away. In cluster mode it learns where entities live from the
    nodes' replies and sends each entity's calls to its owner directly (no forwarding
    hop), switching an entity's route only when none of its calls is in flight, so
    that its calls keep their order.

    ``tls=True`` speaks TLS and trusts the system's roots; ``tls=Tls(ca_file=...,
    cert_file=..., key_file=...)`` trusts that CA and presents that certificate (for a
    node with ``require_client_cert``). ``auth_token`` goes with every call.

    With ``validate=True``, ``enqueue_raw`` and ``enqueue_and_wait_raw`` check the payload
    against the registry (SPEC 11) before sending, with the node's own checks
    (:mod:`aqnode.validation`), and raise the ``ValidationFailed`` the node would
    (``INVALID_PAYLOAD`` naming the field, ``UNKNOWN_ENTITY_TYPE``, ``UNKNOWN_MESSAGE``);
    nothing is sent. The client reads the registry from its node (the ``Registry`` RPC)
    on its first raw send, and again when a message is not in it.
    """

    def __init__(
        self,
        address: str | Sequence[str] = "127.0.0.1:50051",
        *,
        auth_token: str | None = None,
        tls: Tls | bool | None = None,
        follow_owners: bool = True,
        validate: bool = False,
        transport: str = "auto",
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport is one of {', '.join(TRANSPORTS)}, not {transport!r}")
        self.transport = transport
        #: auto: a node's native connection, found in the background, and taken in place
        #: of its gRPC one once that has no call in flight (so no call overtakes another)
        self._upgrades: dict[str, NativeConnection] = {}
        self._discovering: set[asyncio.Task[None]] = set()
        self.validate = validate
        self._validator: Validator | None = None
        self._validator_read_at = 0.0
        self._fetch: asyncio.Future[Validator] | None = None
        self.addresses = parse_addresses(address)
        self._metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        self._credentials = credentials_for(tls)  # read now: a bad file fails here
        self._token = auth_token
        self._tls = Tls() if tls is True else (tls or None)
        self._follow_owners = follow_owners
        self._primary = 0  #: index in addresses of the node sends go to by default
        self._connections: dict[str, Connection | NativeConnection] = {}
        self._routes: dict[str, str] = {}  #: entity key -> its owner's address (learned)
        self._in_flight: dict[str, list[Any]] = {}  #: entity key -> [address, calls]

    @property
    def address(self) -> str:
        """The node this client sends to (in a cluster: unless an entity's owner is known)."""
        return self.addresses[self._primary]

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _connection(self, address: str) -> Connection | NativeConnection:
        conn = self._connections.get(address)
        if conn is None:
            if is_native(address):
                # Imported when first used: a gRPC-only client loads no framing code.
                from aqnode.client.native import NativeConnection

                conn = NativeConnection(address, self._token, self._tls)
            else:
                conn = Connection(address, self._metadata, credentials=self._credentials)
                if self.transport == "auto":
                    self._discover(address, conn)
            self._connections[address] = conn
        elif address in self._upgrades and conn.idle:
            old, conn = conn, self._upgrades.pop(address)
            self._connections[address] = conn
            self._spawn(old.close())
        return conn

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._discovering.add(task)
        task.add_done_callback(self._discovering.discard)

    def _discover(self, address: str, conn: Connection) -> None:
        """Ask the node (over gRPC) where its native protocol listens; connect there."""
        self._spawn(self._find_native(address, conn))

    async def _find_native(self, address: str, conn: Connection) -> None:
        from aqnode.client.native import NativeConnection, candidates

        try:
            status = await conn.status(DISCOVERY_TIMEOUT_S)
        except errors.AqError:
            return  # unreachable or refused: the calls themselves say why
        for candidate in candidates(address, status.native_socket, status.native_address):
            native = NativeConnection(candidate, self._token, self._tls)
            try:
                await native.ready(DISCOVERY_TIMEOUT_S)
            except TimeoutError:
                await native.close()
                continue
            except asyncio.CancelledError:  # the client closed meanwhile: no await here
                native.drop()
                raise
            if native.server_id != status.server_id:  # another host's path, say
                await native.close()
                continue
            if self._connections.get(address) is conn:
                self._upgrades[address] = native
            else:
                await native.close()
            return

    async def connect(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Open the ``Session`` stream to the first node that answers (sends open it
        themselves when needed). With one address, no wait: a node that is not up yet
        is found by the first send."""
        if len(self.addresses) > 1:
            for _ in self.addresses:
                conn = self._connection(self.address)
                try:
                    await conn.ready(timeout)
                    break
                except TimeoutError:
                    self._went_away(self.address)
        self._connection(self.address).connect()

    async def close(self) -> None:
        pending = list(self._discovering)
        for task in pending:
            task.cancel()
        if pending:  # bounded: a connection that will not close must not hang the client
            await asyncio.wait(pending, timeout=CLOSE_WAIT_S)
        upgrades, self._upgrades = list(self._upgrades.values()), {}
        for native in upgrades:
            await native.close()
        connections, self._connections = list(self._connections.values()), {}
        for conn in connections:
            await conn.close()

    async def status(self, timeout: float = 5.0) -> NodeStatus:
        """The node's :class:`NodeStatus`: its shards, role, master, epoch and members.

        ``timeout`` is in seconds; an unreachable node raises ``AqError`` ``UNAVAILABLE``
        (after the client tried each of its addresses once).
        """
        for _ in self.addresses:
            address = self.address
            try:
                return await self._connection(address).status(timeout)
            except errors.AqError as exc:
                if exc.code != errors.UNAVAILABLE or len(self.addresses) == 1:
                    raise
                self._went_away(address)
                last = exc
        raise last

    async def registry(self, timeout: float = REGISTRY_TIMEOUT_S) -> Snapshot:
        """The registry (SPEC 11) as the node serves it: every service group on its Redis,
        with the node's own group as it handles it now."""
        for _ in self.addresses:
            address = self.address
            try:
                return decode_snapshot(await self._connection(address).registry(timeout))
            except errors.AqError as exc:
                if exc.code != errors.UNAVAILABLE or len(self.addresses) == 1:
                    raise
                self._went_away(address)
                last = exc
        raise last

    # ---- validate=True ------------------------------------------------------------------

    async def _check_raw(self, envelope: Envelope) -> None:
        if not self.validate:
            return
        validator = self._validator
        if validator is None or not _knows(validator, envelope):
            recent = time.monotonic() - self._validator_read_at < REGISTRY_RECHECK_S
            if validator is None or not recent or self._fetching:
                validator = await self._read_registry()
        validator.validate(
            envelope.entity_type,
            envelope.message,
            envelope.entity_id,
            envelope.payload,
            envelope.content_type,
        )

    @property
    def _fetching(self) -> bool:
        return self._fetch is not None and not self._fetch.done()

    async def _read_registry(self) -> Validator:
        """The validator of the registry read now (one read for every caller meanwhile)."""
        if not self._fetching:
            self._fetch = asyncio.ensure_future(self._load_validator())
        assert self._fetch is not None
        return await asyncio.shield(self._fetch)

    async def _load_validator(self) -> Validator:
        snapshot = await self.registry()
        self._validator = Validator(snapshot.message_entries())
        self._validator_read_at = time.monotonic()
        return self._validator

    # ---- routing ----------------------------------------------------------------------

    def _route(self, env: Envelope) -> tuple[str, str]:
        """(entity key or "", the address its call goes to)."""
        if not env.entity_id:
            return "", self.address
        key = f"{env.entity_type}:{env.entity_id}"
        flight = self._in_flight.get(key)
        if flight is not None:  # the same way as its calls still in flight: FIFO
            return key, flight[0]
        return key, self._routes.get(key, self.address)

    def native_route(self, env: Envelope) -> tuple[str, str, str, str] | None:
        """For SyncClient's blocking path, from its calling thread: (entity key, the
        address its call goes to, that node's native address, its server id) when the
        call may go over a native connection of the caller's own: the node's native
        endpoint is open here and none of the entity's calls is in flight on this loop
        (so it overtakes nothing). None: send it the usual way."""
        if self._fetching:
            return None
        key, address = self._route(env)
        if key and key in self._in_flight:
            return None
        conn = self._connections.get(address)
        native = self._upgrades.get(address)
        if conn is not None and conn.native:
            native = cast("NativeConnection", conn)
        if native is None or not native.server_id or not native.connected:
            return None
        return key, address, native.address, native.server_id

    def learned(self, key: str, address: str, result: SendResult) -> bool:
        """Whether ``result`` (of a call sent around the loop) teaches the client
        something: then :meth:`_learn` must run on the loop."""
        if not result.ok:
            return (result.error or {}).get("code") == errors.UNAVAILABLE
        return bool(key and result.owner and self._follow_owners and result.owner != address)

    def _landed(self, key: str, address: str, result: SendResult) -> None:
        if key:
            flight = self._in_flight.get(key)
            if flight is not None:
                flight[1] -= 1
                if flight[1] <= 0:
                    del self._in_flight[key]
        self._learn(key, address, result)

    def _learn(self, key: str, address: str, result: SendResult) -> None:
        if not result.ok and (result.error or {}).get("code") == errors.UNAVAILABLE:
            self._went_away(address)
        elif key and result.owner and self._follow_owners and result.owner != address:
            if len(self._routes) >= MAX_ROUTES:
                self._routes.clear()  # a cache: relearned from the next replies
            self._routes[key] = result.owner

    def _went_away(self, address: str) -> None:
        """``address`` failed: forget routes through it; move off it if it is the primary."""
        for key in [k for k, a in self._routes.items() if a == address]:
            del self._routes[key]
        if address == self.address and len(self.addresses) > 1:
            self._primary = (self._primary + 1) % len(self.addresses)

    # ---- sends ------------------------------------------------------------------------

    async def _send(
        self, envelopes: list[Envelope], *, wait: bool, timeout: float | None
    ) -> list[SendResult]:
        for env in envelopes:
            check_size(env)
        if self._fetching:
            # validate=True reads the registry: calls made meanwhile wait for it too, and
            # wake in the order they were made, so they keep their order behind the raw
            # call that is waiting for it.
            assert self._fetch is not None
            with contextlib.suppress(Exception):
                await asyncio.shield(self._fetch)
        timeout_ms = timeout_ms_of(timeout)
        # Group by destination, in order; each group goes out in one post.
        groups: dict[str, list[int]] = {}
        keys: list[str] = []
        for i, env in enumerate(envelopes):
            key, address = self._route(env)
            keys.append(key)
            groups.setdefault(address, []).append(i)
            if key:
                flight = self._in_flight.setdefault(key, [address, 0])
                flight[1] += 1
        futures: list[Any] = [None] * len(envelopes)
        where: list[str] = [""] * len(envelopes)
        for address, indexes in groups.items():
            posted = self._connection(address).post(
                [envelopes[i] for i in indexes], wait=wait, timeout_ms=timeout_ms
            )
            for i, future in zip(indexes, posted, strict=True):
                futures[i], where[i] = future, address
        if timeout:
            limit = timeout + TIMEOUT_GRACE_S
        else:
            limit = NO_TIMEOUT_WAIT_S if wait else SEND_TIMEOUT_S
        try:
            results: list[SendResult]
            if len(futures) == 1:
                # One call: no gather, no wait_for task (3 fewer loop turns), and a bare
                # timer rather than asyncio.timeout (whose current_task() and
                # get_running_loop() are a getpid() system call each in CPython 3.11).
                future = futures[0]
                loop = future.get_loop()
                expiry = loop.call_at(loop.time() + limit, _expire, future)
                try:
                    results = [await future]
                finally:
                    expiry.cancel()
            else:
                results = list(await asyncio.wait_for(asyncio.gather(*futures), limit))
        except TimeoutError:
            for address, indexes in groups.items():
                self._connection(address).forget([futures[i] for i in indexes])
            for i in range(len(envelopes)):
                self._landed(keys[i], where[i], SendResult("", True))
            if wait:
                raise errors.ReplyTimeout(
                    f"no answer from {self.address} within {limit:.1f}s; the message may still run"
                ) from None
            raise errors.Unavailable(
                f"{self.address} did not acknowledge within {limit:.0f}s; the message may or may "
                "not be enqueued: send it again with the same message_id to be sure"
            ) from None
        for i, result in enumerate(results):
            self._landed(keys[i], where[i], result)
        return results


async def _learn_now(client: Client, key: str, address: str, result: SendResult) -> None:
    client._learn(key, address, result)


def _expire(future: asyncio.Future[SendResult]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _knows(validator: Validator, envelope: Envelope) -> bool:
    return envelope.message in validator.entity_types.get(envelope.entity_type, {})


def parse_addresses(address: str | Sequence[str]) -> list[str]:
    """``"h1:p1,h2:p2"`` or a list of them: the nodes, in the order given, no repeats."""
    parts = address.split(",") if isinstance(address, str) else list(address)
    found = [a.strip() for a in parts if a and a.strip()]
    if not found:
        raise ValueError("no node address given: pass 'HOST:PORT' or several")
    return list(dict.fromkeys(found))


MAX_ROUTES = 100_000  #: entity routes a client remembers before it starts afresh


_background: asyncio.AbstractEventLoop | None = None
_background_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """One event loop per process, in a daemon thread, for every :class:`SyncClient`.

    gRPC's asyncio layer binds to the loop it first runs on; one shared loop that never
    closes keeps it from calling into a loop that is gone.
    """
    global _background
    with _background_lock:
        if _background is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="aqnode-client", daemon=True).start()
            _background = loop
        return _background


class SyncClient:
    """The blocking twin of :class:`Client`: same methods, run on a shared background loop."""

    def __init__(
        self,
        address: str | Sequence[str] = "127.0.0.1:50051",
        *,
        auth_token: str | None = None,
        tls: Tls | bool | None = None,
        follow_owners: bool = True,
        validate: bool = False,
        transport: str = "auto",
    ) -> None:
        self._loop = background_loop()
        self._closed = False
        tls_ = Tls() if tls is True else (tls or None)
        #: each calling thread's blocking native sockets (aqnode/client/blocking.py)
        self._threads = ThreadConnections(auth_token, tls_)
        self._client = self._run(
            _make_client(
                address,
                auth_token=auth_token,
                tls=tls,
                follow_owners=follow_owners,
                validate=validate,
                transport=transport,
            )
        )

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._threads.close()
            self._run(self._client.close())

    def _direct(self, env: Envelope, *, wait: bool, timeout: float | None) -> SendResult | None:
        """One call from this thread over its own blocking native socket, when the
        client's routing allows it (see Client.native_route); None: not sent, send it
        on the loop. Saves the two thread wake-ups of the hop to the loop."""
        if self._closed:
            return None
        client = self._client
        route = client.native_route(env)
        if route is None:
            return None
        key, address, native_address, server_id = route
        check_size(env)
        timeout_ms = timeout_ms_of(timeout)
        limit = (
            timeout + TIMEOUT_GRACE_S
            if timeout
            else (NO_TIMEOUT_WAIT_S if wait else SEND_TIMEOUT_S)
        )
        conn = self._threads.get(native_address, server_id)
        try:
            result = conn.call(env, wait=wait, timeout_ms=timeout_ms, limit=limit)
        except NotSent:
            return None
        if client.learned(key, address, result):
            # Learned before this call returns (rare: a node gone, an owner moved), so
            # the caller's next call is routed by it; a failure learned late could move
            # the client off a node that has answered since.
            self._run(_learn_now(client, key, address, result))
        return result

    def enqueue(self, msg: Message, *, message_id: str | None = None) -> str:
        result = self._direct(envelope_of(msg, message_id), wait=False, timeout=None)
        if result is None:
            return self._run(self._client.enqueue(msg, message_id=message_id))
        result.raise_for_error()
        return result.message_id

    def enqueue_many(
        self, msgs: Iterable[Message], *, message_ids: Iterable[str | None] | None = None
    ) -> list[str]:
        return self._run(self._client.enqueue_many(list(msgs), message_ids=message_ids))

    def enqueue_and_wait(
        self, msg: Message, *, timeout: float | None = None, message_id: str | None = None
    ) -> Any:
        result = self._direct(envelope_of(msg, message_id), wait=True, timeout=timeout)
        if result is None:
            return self._run(
                self._client.enqueue_and_wait(msg, timeout=timeout, message_id=message_id)
            )
        return typed_decode(msg, result)

    def enqueue_raw(
        self,
        entity_type: str,
        message: str,
        entity_id: str,
        data: Mapping[str, Any] | bytes,
        *,
        message_id: str | None = None,
        content_type: str | None = None,
    ) -> str:
        return self._run(
            self._client.enqueue_raw(
                entity_type,
                message,
                entity_id,
                data,
                message_id=message_id,
                content_type=content_type,
            )
        )

    def enqueue_and_wait_raw(
        self,
        entity_type: str,
        message: str,
        entity_id: str,
        data: Mapping[str, Any] | bytes,
        *,
        timeout: float | None = None,
        message_id: str | None = None,
        content_type: str | None = None,
    ) -> Any:
        return self._run(
            self._client.enqueue_and_wait_raw(
                entity_type,
                message,
                entity_id,
                data,
                timeout=timeout,
                message_id=message_id,
                content_type=content_type,
            )
        )

    def for_entity(self, entity_type: str, entity_id: str) -> SyncEntityClient:
        return SyncEntityClient(self, self._client.for_entity(entity_type, entity_id))

    @property
    def address(self) -> str:
        """The node this client sends to by default (see :attr:`Client.address`)."""
        return self._client.address

    def status(self, timeout: float = 5.0) -> NodeStatus:
        """The node's :class:`NodeStatus` (see :meth:`Client.status`)."""
        return self._run(self._client.status(timeout))

    def registry(self, timeout: float = REGISTRY_TIMEOUT_S) -> Snapshot:
        """The registry as the node serves it (see :meth:`Client.registry`)."""
        return self._run(self._client.registry(timeout))


class SyncEntityClient:
    def __init__(self, owner: SyncClient, bus: EntityBus) -> None:
        self._owner = owner
        self._bus = bus

    def enqueue(self, msg: Message, *, message_id: str | None = None) -> str:
        return self._owner._run(self._bus.enqueue(msg, message_id=message_id))

    def enqueue_and_wait(
        self, msg: Message, *, timeout: float | None = None, message_id: str | None = None
    ) -> Any:
        return self._owner._run(
            self._bus.enqueue_and_wait(msg, timeout=timeout, message_id=message_id)
        )

    def enqueue_raw(
        self,
        message: str,
        data: Mapping[str, Any] | bytes,
        *,
        message_id: str | None = None,
        content_type: str | None = None,
    ) -> str:
        return self._owner._run(
            self._bus.enqueue_raw(message, data, message_id=message_id, content_type=content_type)
        )

    def enqueue_and_wait_raw(
        self,
        message: str,
        data: Mapping[str, Any] | bytes,
        *,
        timeout: float | None = None,
        message_id: str | None = None,
        content_type: str | None = None,
    ) -> Any:
        return self._owner._run(
            self._bus.enqueue_and_wait_raw(
                message, data, timeout=timeout, message_id=message_id, content_type=content_type
            )
        )


async def _make_client(address: str | Sequence[str], **options: Any) -> Client:
    client = Client(address, **options)
    if len(client.addresses) > 1:
        await client.connect()  # start on a node that answers
    return client
