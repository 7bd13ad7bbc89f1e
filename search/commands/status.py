"""``scalesearch status DB``: progress, budgets spent, failures by status, and the current top candidates."""

from __future__ import annotations

import argparse
import json
import sys

from search.inspection import TOP_IN_STATUS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("status", help="campaign progress, budgets, failures and the top candidates",
                              description=__doc__.split("\n\n")[0].strip("`"))
    p.add_argument("db", metavar="DB", help="the campaign database (SQLite file)")
    p.add_argument("--top", type=int, default=TOP_IN_STATUS, metavar="K", help=f"candidates shown (default {TOP_IN_STATUS})")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from search import inspection, views

    try:
        status = inspection.campaign_status(inspection.open_readonly(args.db), top=args.top)
    except inspection.CampaignFileError as e:
        print(f"scalesearch status: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(status))
    else:
        console = Console()
        console.print(views.status_view(status, console.width))
    return 0
