"""A handler's ``ctx.bus`` inside a shard: sends become ``Submit`` frames to the supervisor."""

from __future__ import annotations

import asyncio
import itertools

from aqnode import errors, ipc
from aqnode.bus import Bus, Envelope, SendResult, timeout_ms_of


class ShardBus:
    """A shard's way to send: ``Submit`` items to the supervisor, answered by request id."""

    def __init__(self, channel: ipc.ShardEnd) -> None:
        self._channel = channel
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[SendResult]] = {}
        self.max_payload_bytes = 4 * 1024 * 1024  #: the config's, set once it is known

    async def send(
        self, envelopes: list[Envelope], *, wait: bool, timeout: float | None, caller: str
    ) -> list[SendResult]:
        for env in envelopes:  # checked here: a frame the supervisor refuses ends the shard
            if len(env.payload) > self.max_payload_bytes:
                raise errors.PayloadTooLarge(
                    f"the payload is {len(env.payload)} bytes, over max_payload_bytes = "
                    f"{self.max_payload_bytes}; nothing was sent"
                )
        timeout_ms = timeout_ms_of(timeout)
        items = [
            ipc.Submit(
                next(self._ids),
                env.entity_type,
                env.message,
                env.entity_id,
                env.payload,
                wait,
                timeout_ms,
                env.message_id,
                caller,
            )
            for env in envelopes
        ]
        try:
            self._channel.send_all(items)  # all or none: nothing is half-sent
        except ipc.FrameEncodeError as exc:
            raise errors.ValidationFailed(f"nothing was sent: {exc}") from None
        loop = asyncio.get_running_loop()
        futures = []
        for item in items:
            future: asyncio.Future[SendResult] = loop.create_future()
            self._waiting[item.request_id] = future
            futures.append(future)
        return list(await asyncio.gather(*futures))

    def resolve(self, item: ipc.SubmitResult) -> None:
        future = self._waiting.pop(item.request_id, None)
        if future is not None and not future.done():
            future.set_result(SendResult(item.message_id, item.ok, item.reply, error=item.error))


class ContextBus(Bus):
    """``ctx.bus``: the client API from inside a handler, aware of its own entity."""

    def __init__(self, shard_bus: ShardBus, entity_type: str, entity_id: str) -> None:
        self._shard_bus = shard_bus
        self._entity_type = entity_type
        self._entity_id = entity_id

    async def _send(
        self, envelopes: list[Envelope], *, wait: bool, timeout: float | None
    ) -> list[SendResult]:
        caller = f"{self._entity_type}:{self._entity_id}"
        return await self._shard_bus.send(envelopes, wait=wait, timeout=timeout, caller=caller)

    def _check_wait(self, envelope: Envelope) -> None:
        if envelope.entity_type == self._entity_type and envelope.entity_id == self._entity_id:
            raise errors.SelfWait(
                f"a handler of {self._entity_type}:{self._entity_id} waited on its own entity, "
                "which runs one message at a time and would wait for ever; use enqueue instead"
            )
