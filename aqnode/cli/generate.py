"""``aqnode generate``: Python, JSON Schema and TypeScript from the registry (SPEC 11).

The registry is read as ``aqnode introspect`` reads it; the generators are pure functions
(``aqnode/codegen/``), so generating twice from the same entries writes the same bytes.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from aqnode.cli.common import config_option
from aqnode.cli.introspect import key_prefix_option, read_registry, redis_url_option


@click.command(short_help="Write Python, JSON Schema or TypeScript for the registry's messages.")
@click.option(
    "--python",
    "python_out",
    is_flag=True,
    help="Write MODULE.py: msgspec Command/Query classes with typed replies.",
)
@click.option(
    "--json-schema",
    "schema_out",
    is_flag=True,
    help="Write one JSON Schema (draft 2020-12) per message and per reply.",
)
@click.option(
    "--ts", "ts_out", is_flag=True, help="Write MODULE.ts: TypeScript types (tsc --strict)."
)
@click.option(
    "-o",
    "--output",
    "output",
    metavar="DIR",
    required=True,
    type=click.Path(file_okay=False),
    help="The directory to write to (made if missing; files there are replaced).",
)
@click.option(
    "--entity-type",
    "entity_types",
    metavar="TYPE",
    multiple=True,
    help="Only this entity type's messages (repeatable).  [default: all]",
)
@click.option(
    "--module",
    metavar="NAME",
    default=None,
    help="The name of the .py and .ts files.  [default: GROUP_messages for one service "
    "group, else aqnode_messages]",
)
@config_option
@redis_url_option
@key_prefix_option
def generate(
    python_out: bool,
    schema_out: bool,
    ts_out: bool,
    output: str,
    entity_types: tuple[str, ...],
    module: str | None,
    config: str | None,
    redis_url: str | None,
    key_prefix: str | None,
) -> None:
    """Write code for the messages in the registry, so that another service can send
    them without the handlers' code: --python (an importable module of msgspec classes
    with the same names, fields, constraints, entity types and reply types), --json-schema
    (one file per message and reply) and --ts (TypeScript types), into the directory -o
    DIR. Each file says what generated it and from which registry entries; the same
    entries always give the same bytes.

    \b
    Examples:
      aqnode generate --python -o clients/ --entity-type order
      aqnode generate --json-schema --ts -o schemas/ --redis-url redis://10.0.0.5:6379/0
    """
    from aqnode.codegen import build, jsonschema, python, typescript

    if not (python_out or schema_out or ts_out):
        raise click.UsageError("say what to write: --python, --json-schema and/or --ts")
    if module is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", module):
        raise click.BadParameter(f"{module!r} is not a Python module name", param_hint="--module")
    snapshot = read_registry(config, redis_url, key_prefix)
    known = sorted({et.name for _, et in snapshot.entity_types()})
    if not known:
        raise click.ClickException(
            "the registry holds no entity type: no node published to this Redis (and key "
            "prefix) in the last day; start one, or check with `aqnode introspect`"
        )
    if entity_types:
        try:
            snapshot = snapshot.select(entity_types)
        except KeyError as exc:
            raise click.ClickException(
                f"the registry has no entity type {exc.args[0]!r} (it has: {', '.join(known)})"
            ) from None
    try:
        model = build(snapshot)
        files: dict[str, str] = {}
        name = module or _module_name(sorted({g for g, _ in model.sources}))
        if python_out:
            files[f"{name}.py"] = python.render(model, name)
        if ts_out:
            files[f"{name}.ts"] = typescript.render(model)
        if schema_out:
            files.update(jsonschema.render(model))
    except ValueError as exc:
        raise click.ClickException(f"cannot generate: {exc}") from None
    where = Path(output)
    try:
        where.mkdir(parents=True, exist_ok=True)
        for file_name, text in files.items():
            (where / file_name).write_bytes(text.encode("utf-8"))
    except OSError as exc:
        raise click.ClickException(f"cannot write to {output}: {exc.strerror or exc}") from None
    count = len(model.messages)
    noun = "file" if len(files) == 1 else "files"
    click.echo(f"wrote {len(files)} {noun} for {count} messages to {where}")
    for file_name in sorted(files):
        click.echo(f"  {where / file_name}")


def _module_name(groups: list[str]) -> str:
    if len(groups) != 1:
        return "aqnode_messages"
    name = re.sub(r"\W", "_", groups[0], flags=re.ASCII)
    return f"{name}_messages" if name[:1].isalpha() else f"aq_{name}_messages"
