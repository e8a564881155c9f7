"""Every ``aqnode`` command and option explains itself in ``--help``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from aqnode.cli import main


def commands(group: click.Group = main, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name)


ALL = list(commands())


def command_at(path: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def help_text(*path: str) -> str:
    shown = subprocess.run(
        [sys.executable, "-m", "aqnode", *path, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "100"},
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "aqnode")
def test_every_command_and_option_has_a_help_line(path: tuple[str, ...]) -> None:
    command = command_at(path)
    assert command.help and len(command.help.split()) >= 4, path
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help and len(param.help.split()) >= 2, (path, param.name)
            # A typed placeholder (ID, DURATION, HOST:PORT), never click's generic TEXT.
            assert "TEXT" not in param.get_help_record(click.Context(command))[0]
        else:
            # Arguments have no help of their own: the command's text names each one.
            assert param.human_readable_name in command.help, (path, param.name)


@pytest.mark.parametrize("group", [(), ("dlq",)], ids=["aqnode", "aqnode dlq"])
def test_command_listings_are_not_cut_short(group: tuple[str, ...]) -> None:
    listing = help_text(*group).split("Commands:")[1]
    assert "..." not in listing
    listed = re.findall(r"^  (\S+)", listing, re.M)
    command = command_at(group)
    assert isinstance(command, click.Group)
    assert sorted(listed) == sorted(command.commands)


def test_the_top_level_help_says_where_commands_find_the_node() -> None:
    text = help_text()
    assert "--config" in text and "AQNODE_CONFIG" in text and "--address" in text


# --- numeric options are validated types: a bad number is a usage error, exit 2 --------------


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "aqnode")
def test_no_numeric_option_is_unbounded(path: tuple[str, ...]) -> None:
    from aqnode.cli.common import Seconds

    for param in command_at(path).params:
        kind = param.type
        if isinstance(kind, click.types.FloatRange | click.types.IntRange):
            assert kind.min is not None and kind.max is not None, (path, param.name)
        elif isinstance(kind, Seconds):
            assert 0 < kind.minimum <= kind.maximum < 2**32 / 1000, (path, param.name)
        else:
            # a bare float or int would take -1, nan, inf or 1e30 to the wire
            assert not isinstance(kind, click.types.FloatParamType | click.types.IntParamType), (
                path,
                param.name,
            )


@pytest.mark.parametrize(
    "value", ["-1", "0", "1e30", "nan", "inf", "-inf", "4294968", "2592000.5", "soon", "0.0001"]
)
def test_a_wait_timeout_out_of_range_is_a_usage_error(value: str) -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(
        main,
        ["enqueue", "h", "Do", "k1", "--data", "{}", "--wait", "--timeout", value,
         "--address", "127.0.0.1:1"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Invalid value for '--timeout'" in result.output
    assert "Traceback" not in result.output


def test_the_largest_wait_timeout_fits_the_wire() -> None:
    from aqnode.cli.common import MAX_WAIT_S, MIN_WAIT_S, Seconds
    from aqnode.v1 import aqnode_pb2 as pb

    assert Seconds().convert("2592000", None, None) == MAX_WAIT_S
    assert Seconds().convert("0.001", None, None) == MIN_WAIT_S
    pb.Call(timeout_ms=int(MAX_WAIT_S * 1000))  # a uint32: raises if it does not fit


def test_an_endless_older_than_is_a_usage_error() -> None:
    from click.testing import CliRunner

    endless = "9" * 400 + "d"  # parses, but as an infinite number of seconds
    result = CliRunner().invoke(
        main, ["dlq", "purge", "--older-than", endless, "--redis-url", "redis://127.0.0.1:1/0"]
    )
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--older-than'" in result.output


# --- dlq with --redis-url needs no config file ------------------------------------------------


def test_dlq_list_and_show_need_no_config_file_with_a_redis_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    import redis
    from click.testing import CliRunner

    from aqnode.wal.keys import LogKeys, nodes_key

    # Given a dead letter under the key prefix "other", and no node.toml where we are
    keys = LogKeys("other", "node-1")
    with redis.Redis.from_url(redis_url) as client:
        client.sadd(nodes_key("other"), "node-1")
        client.zadd(keys.dlq, {"m-1": 1.0})
        client.hset(
            keys.entry("m-1"),
            mapping={"entity_type": "account", "entity_id": "a-1", "message": "Deposit",
                     "reason": "exhausted", "attempts": 1, "dead_lettered_at": 1.0},
        )  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AQNODE_CONFIG", raising=False)
    runner = CliRunner()

    listed = runner.invoke(
        main, ["dlq", "list", "--json", "--redis-url", redis_url, "--key-prefix", "other"]
    )
    assert listed.exit_code == 0, listed.output
    assert [d["id"] for d in json.loads(listed.output)] == ["m-1"]
    shown = runner.invoke(
        main, ["dlq", "show", "m-1", "--redis-url", redis_url, "--key-prefix", "other"]
    )
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["entity_id"] == "a-1"
    # the default key prefix (aq) holds none
    default = runner.invoke(main, ["dlq", "list", "--json", "--redis-url", redis_url])
    assert default.exit_code == 0, default.output
    assert json.loads(default.output) == []
    # without --redis-url the missing config file is still the problem, named
    missing = runner.invoke(main, ["dlq", "list"])
    assert missing.exit_code == 1
    assert "node.toml does not exist" in missing.output
    # and a --config that names a missing file is an error even with --redis-url
    named = runner.invoke(
        main, ["dlq", "list", "--redis-url", redis_url, "--config", str(tmp_path / "x.toml")]
    )
    assert named.exit_code == 1 and "does not exist" in named.output
