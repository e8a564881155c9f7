"""Entity key -> shard (aqnode.util.ring): determinism, balance and stability."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from aqnode.util import ring
from aqnode.util.ring import HashRing, entity_key

_ROOT = Path(__file__).resolve().parents[2]
KEYS = [entity_key("order", f"o-{i}") for i in range(10_000)]


def _shards_in_subprocess(hashseed: str, shard_count: int, keys: list[str]) -> dict[str, object]:
    """The shard of each key, and hash() of a str, computed by a fresh interpreter."""
    code = (
        "import json, sys\n"
        "from aqnode.util.ring import HashRing\n"
        "count, keys = json.load(sys.stdin)\n"
        "r = HashRing(count)\n"
        "json.dump({'shards': [r.shard_for(k) for k in keys], 'hash': hash('order:o-1')},"
        " sys.stdout)\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONPATH": str(_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps([shard_count, keys]),
        capture_output=True,
        text=True,
        env=env,
        cwd=_ROOT,
        timeout=30,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_the_mapping_is_the_same_in_processes_with_different_hash_seeds() -> None:
    keys = KEYS[:2000]
    r = HashRing(7)
    here = [r.shard_for(k) for k in keys]
    one = _shards_in_subprocess("1", 7, keys)
    other = _shards_in_subprocess("4242", 7, keys)
    assert one["hash"] != other["hash"]  # the seeds did change str hashing
    assert one["shards"] == here
    assert other["shards"] == here


def test_known_keys_land_on_their_pinned_shards() -> None:
    # Pinned so that a change of the hash, of the vnode naming or of VNODES_PER_SHARD (which
    # would move entities between shards across an upgrade) is a deliberate decision.
    r = HashRing(4)
    assert [r.shard_for(entity_key("order", f"o-{i}")) for i in range(12)] == [
        1,
        1,
        0,
        3,
        3,
        2,
        0,
        3,
        3,
        0,
        0,
        1,
    ]


def test_two_rings_of_the_same_size_agree() -> None:
    a, b = HashRing(5), HashRing(5)
    assert all(a.shard_for(k) == b.shard_for(k) for k in KEYS)


@pytest.mark.parametrize("shard_count", [2, 3, 4, 5, 8, 16])
def test_every_shard_gets_a_fair_share_of_ten_thousand_keys(shard_count: int) -> None:
    r = HashRing(shard_count)
    counts = Counter(r.shard_for(k) for k in KEYS)
    fair = len(KEYS) / shard_count
    assert set(counts) == set(range(shard_count))
    for shard, count in counts.items():
        assert 0.75 * fair <= count <= 1.25 * fair, (shard, count, fair)


@pytest.mark.parametrize("shard_count", [1, 2, 3, 4, 7, 8, 15])
def test_adding_a_shard_moves_about_its_share_of_keys_and_only_to_it(shard_count: int) -> None:
    before, after = HashRing(shard_count), HashRing(shard_count + 1)
    moved: Counter[int] = Counter()
    for k in KEYS:
        old, new = before.shard_for(k), after.shard_for(k)
        if old != new:
            moved[new] += 1
    assert set(moved) == {shard_count}  # only to the new shard
    expected = len(KEYS) / (shard_count + 1)
    assert 0.75 * expected <= moved[shard_count] <= 1.25 * expected


def test_a_single_shard_takes_every_key() -> None:
    r = HashRing(1)
    assert {r.shard_for(k) for k in KEYS[:500]} == {0}


@pytest.mark.parametrize("shard_count", [0, -1])
def test_a_ring_without_shards_is_refused(shard_count: int) -> None:
    with pytest.raises(ValueError, match="at least one shard"):
        HashRing(shard_count)


def test_shards_are_always_in_range_whatever_the_key() -> None:
    r = HashRing(3)
    odd = ["", ":", "ü:ñ", "x" * 10_000, "\x00", "order:" + "🙂" * 10]
    assert all(0 <= r.shard_for(k) < 3 for k in [*odd, *KEYS[:1000]])


def test_a_key_past_the_last_ring_point_wraps_to_the_first() -> None:
    r = HashRing(2, vnodes=1)
    last = max(r._points)
    first_shard = r._shards[r._points.index(min(r._points))]
    past = next(k for k in KEYS if ring._point(k) > last)
    assert r.shard_for(past) == first_shard


def test_entity_key_joins_type_and_id_with_a_colon() -> None:
    assert entity_key("order", "o-1") == "order:o-1"
    assert entity_key("order", "a:b:c") == "order:a:b:c"
    assert entity_key("order", "a:b:c").split(":", 1) == ["order", "a:b:c"]
    assert entity_key("order", "") == "order:"


def test_the_shard_cache_answers_like_the_ring_and_stays_bounded() -> None:
    from aqnode.util.ring import SHARD_CACHE_SIZE

    keys = [entity_key("order", f"o-{i}") for i in range(SHARD_CACHE_SIZE * 2 + 7)]
    cached = HashRing(3)
    first = [cached.shard_for(k) for k in keys]
    again = [cached.shard_for(k) for k in keys]  # half from the cache, across its emptying
    uncached = HashRing(3)
    fresh = []
    for k in keys:  # each a lookup on the ring itself
        uncached._cache.clear()
        fresh.append(uncached.shard_for(k))
    assert first == again == fresh
    assert 0 < len(cached._cache) <= SHARD_CACHE_SIZE
