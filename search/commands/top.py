"""``scalesearch top DB``: the best candidates by predicted loss at the target compute C*."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("top", help="the best candidates by predicted loss at C*, with intervals",
                              description=__doc__.split("\n\n")[0].strip("`"))
    p.add_argument("db", metavar="DB", help="the campaign database (SQLite file)")
    p.add_argument("-k", type=int, default=10, metavar="K", help="how many (default 10)")
    p.add_argument("--json", action="store_true", help="print the leaderboard as a JSON list")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from search import inspection, views

    if args.k < 1:
        print(f"scalesearch top: -k must be at least 1, got {args.k}", file=sys.stderr)
        return 2
    try:
        rows = inspection.leaderboard(inspection.open_readonly(args.db), args.k)
    except inspection.CampaignFileError as e:
        print(f"scalesearch top: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows))
    elif rows:
        console = Console()
        console.print(views.leaderboard_table(rows, f"Top {len(rows)} by predicted loss at C* (nats/byte)", width=console.width))
    else:
        print("No candidate has a fitted law yet.")
    return 0
