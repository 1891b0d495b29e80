"""The ``provgraph`` command line.

Each sub-command lives in its own module under :mod:`provgraph.commands` and exposes
``register(subparsers)``; modules are imported when the parser is built, and a command
whose optional dependencies are missing still lists itself and explains the extra.

Exit codes: 0 success, 1 a runtime failure (store, transport), 2 a usage or input
error (bad arguments, bad SPARQL, bad config), 3 not found, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .errors import ConfigError, NotFoundError, ParseError, ProvgraphError, QueryError

__all__ = ["COMMANDS", "build_parser", "main"]

#: command modules under provgraph.commands, in --help order
COMMANDS: tuple[str, ...] = (
    "query", "lineage", "export", "import_", "stats", "serve", "status", "replay", "observe", "demo",
)  # fmt: skip

EPILOG = """\
configuration: PROVGRAPH_* environment variables or provgraph.toml (see docs/configuration.md);
  e.g. PROVGRAPH_DATA_DIR=./.provgraph provgraph stats
exit codes: 0 ok, 1 runtime failure, 2 usage/input error, 3 not found
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="provgraph",
        description="W3C PROV provenance store for scientific workflows: capture, integrate, query.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="TOML settings file (default: ./provgraph.toml)")
    parser.add_argument("--data-dir", metavar="DIR", help="data directory (store, journal); PROVGRAPH_DATA_DIR")
    parser.add_argument("--store", metavar="DIR", help="on-disk store path (default: DATA_DIR/store)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"provgraph.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("provgraph.commands"):
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        code = args.func(args)
        return int(code or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ConfigError, QueryError, ParseError) as exc:
        print(f"provgraph: error: {exc}", file=sys.stderr)
        return 2
    except NotFoundError as exc:
        print(f"provgraph: not found: {exc}", file=sys.stderr)
        return 3
    except ProvgraphError as exc:
        print(f"provgraph: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
