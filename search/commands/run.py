"""``scalesearch run SPEC``: create or resume a campaign and search until a budget is spent."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("run", help="run (or resume) the campaign a spec describes")
    p.add_argument("spec", help="campaign spec (TOML), as written by `scalesearch init`")
    p.add_argument("--candidates", type=int, help="override [budget] candidates (0: no limit)")
    p.add_argument("--simulate", action="store_true", help="synthetic losses instead of training (a dry run)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from search.campaign import run_campaign
    from db.schema import CampaignBusy
    from search.config import SpecError, check_spec, load_spec
    from search.opening import CampaignError

    try:
        spec = load_spec(args.spec)
        if args.candidates is not None:
            spec = dataclasses.replace(spec, budget=dataclasses.replace(spec.budget, candidates=args.candidates))
        if args.simulate:
            spec = dataclasses.replace(spec, evaluator=dataclasses.replace(spec.evaluator, simulate=True))
        check_spec(spec)
        return run_campaign(spec, install_signals=True)
    except (SpecError, FileNotFoundError, CampaignError, CampaignBusy) as e:
        print(f"scalesearch run: {e}", file=sys.stderr)
        return 2
