"""The ``aqnode`` command: a thin click shell over the programmatic API.

``node`` holds the commands that run a node or talk to one over gRPC (serve, enqueue,
status); ``dlq`` the dead-letter commands, which read the node's Redis; ``introspect``
and ``generate`` the registry's (SPEC 11), which read it too; ``common`` what they share
(finding the config, the node and its auth token).
"""

from __future__ import annotations

import click

from aqnode.cli.dlq import dlq
from aqnode.cli.generate import generate
from aqnode.cli.introspect import introspect
from aqnode.cli.node import enqueue, serve, status

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aqnode", help="Print the version and exit.")
def main() -> None:
    """aqnode: per-entity sequential processing. Strictly once, fail if interrupted.

    Every command reads the node's config file: --config FILE, else
    $AQNODE_CONFIG, else ./node.toml. The commands that talk to a node take --address
    HOST:PORT to name one directly. Run `aqnode COMMAND --help` for a command's options.

    \b
    Examples:
      aqnode serve --config node.toml
      aqnode enqueue account GetBalance a-1 --data '{"account_id": "a-1"}' --wait
      aqnode status --json
      aqnode dlq list
      aqnode introspect
      aqnode generate --python -o clients/
    """


main.add_command(serve)
main.add_command(enqueue)
main.add_command(status)
main.add_command(dlq)
main.add_command(introspect)
main.add_command(generate)


if __name__ == "__main__":
    main()
