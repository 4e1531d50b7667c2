"""The ``asyncjsoc`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="asyncjsoc", description="Bulk, resumable downloads from the Stanford JSOC."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from asyncjsoc.emulator import _cli as emulator_cli

    emulator_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
