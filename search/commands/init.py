"""``scalesearch init DIR``: a commented campaign spec and the reference seed program."""

from __future__ import annotations

import argparse
import pathlib
import sys

from search.commands import check_out_folder
from search.config import SPEC_TEMPLATE


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("init", help="write a commented campaign spec and a seed program into DIR")
    p.add_argument("dir", help="folder to create (must not hold a campaign.toml yet)")
    p.add_argument("--seed-program", choices=["reference", "weakened"], default="reference",
                   help="which shipped program to start from (default: the reference recipe)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from proxy_models.program import seed_source  # plain file read; no JAX

    root = pathlib.Path(args.dir)
    spec = root / "campaign.toml"
    if spec.exists():
        print(f"scalesearch init: {spec} exists; choose another folder or edit it", file=sys.stderr)
        return 2
    try:
        check_out_folder(args.dir, "DIR")
    except NotADirectoryError as e:
        print(f"scalesearch init: {e}", file=sys.stderr)
        return 2
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / "seed.py").write_text(seed_source(args.seed_program))
        spec.write_text(SPEC_TEMPLATE.format(name=root.resolve().name, spec_name=spec))
    except OSError as e:
        print(f"scalesearch init: cannot write into {root}: {e.strerror}", file=sys.stderr)
        return 2
    print(f"wrote {spec} and {root / 'seed.py'} ({args.seed_program} recipe)\nnext: scalesearch run {spec}")
    return 0
