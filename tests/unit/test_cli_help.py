"""Every ``aqnode`` command and option explains itself in ``--help``."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

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
