"""The ``diffctl`` command: one subcommand per module in ``diffctl.commands``.

Each command module exposes ``register(subparsers)``; it adds its parser and sets ``func`` (args -> exit
code). Modules are imported only when present so a partial install still prints a useful help.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = ("data", "train", "eval", "quickstart", "export", "serve", "images")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffctl", description="Diffusion-based decision making.")
    parser.add_argument("--version", action="version", version=f"diffctl {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"diffctl.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"diffctl.commands.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


def _version() -> str:
    from diffctl import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "accepts_extra", False):
        args.extra = extra
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"diffctl {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
