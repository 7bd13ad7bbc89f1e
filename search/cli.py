"""The ``scalesearch`` command: one subcommand per module in ``search/commands``.

Each command module exposes ``add_parser(subparsers)`` and ``run(args) -> int``
and must import quickly (no JAX at import time), so ``scalesearch --help`` is
instant. Errors a user can fix exit with status 2 and a message on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys

INTERRUPTED = 130  # the exit code after a Ctrl-C, the shell's for SIGINT; run_campaign returns it too

COMMANDS = {
    "init": "search.commands.init",
    "run": "search.commands.run",
    "train": "search.commands.train",
    "eval": "search.commands.eval",
    "fit": "search.commands.fit",
    "status": "search.commands.status",
    "top": "search.commands.top",
    "show": "search.commands.show",
    "compare": "search.commands.compare",
    "plot": "search.commands.plot",
    "ui": "search.commands.ui",
    "export": "search.commands.export",
}


def version_line() -> str:
    """This install's version and the numerical stack's, for bug reports; read from metadata, so JAX is not imported."""
    from importlib import metadata

    def of(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    stack = ", ".join(f"{name} {of(name)}" for name in ("jax", "jaxlib", "optax", "numpy", "scipy"))
    return f"scalesearch {of('scalesearch')} ({stack}; Python {sys.version.split()[0]})"


class _Version(argparse.Action):
    # argparse's own version action wraps the line at the terminal's width; this prints it whole.
    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scalesearch",
        description="Search model blocks and training strategies, ranked by predicted loss at the target compute.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the versions of scalesearch and its numerical stack")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
