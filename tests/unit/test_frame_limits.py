"""One payload or reply always fits in one supervisor-shard frame (found in review: the
config allowed 1 GiB limits over the 256 MiB frame cap, and a handler's ctx.bus payload
was not checked in the shard, so one message could break a shard's stream)."""

from __future__ import annotations

import asyncio

import pytest

from aqnode import errors, ipc
from aqnode.bus import Envelope
from aqnode.config import ConfigError, parse_config
from aqnode.shard.bus import ShardBus


def test_the_config_refuses_limits_that_cannot_cross_one_frame() -> None:
    for key in ("max_payload_bytes", "max_reply_bytes"):
        with pytest.raises(ConfigError) as caught:
            parse_config(f'handlers = ["x"]\n{key} = 536870912\n')
        assert caught.value.key == key
    cfg = parse_config('handlers = ["x"]\nmax_payload_bytes = 134217728\n')
    assert cfg.max_payload_bytes < ipc.MAX_FRAME_BYTES


def test_a_handlers_bus_send_over_max_payload_bytes_is_refused_in_the_shard() -> None:
    sent: list[object] = []

    class Channel:
        def send(self, item: object) -> None:
            sent.append(item)

    async def body() -> None:
        bus = ShardBus(Channel())  # type: ignore[arg-type]
        bus.max_payload_bytes = 1000
        big = Envelope("t", "M", "e", b"x" * 1001)
        with pytest.raises(errors.PayloadTooLarge):
            await bus.send([big], wait=False, timeout=None, caller="t:other")

    asyncio.run(body())
    assert sent == [], "nothing may go to the supervisor"
