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
