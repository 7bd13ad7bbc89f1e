"""``scalesearch compare DB ID1 ID2``: two programs side by side: predictions, laws, shared runs, diff."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("compare", help="two programs side by side, with the diff between them",
                              description=__doc__.split("\n\n")[0].strip("`"))
    p.add_argument("db", metavar="DB", help="the campaign database (SQLite file)")
    p.add_argument("a", type=int, metavar="ID1", help="first program id")
    p.add_argument("b", type=int, metavar="ID2", help="second program id")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from db.record import NotFoundError
    from search import inspection, views

    try:
        d = inspection.comparison(inspection.open_readonly(args.db), args.a, args.b)
    except (inspection.CampaignFileError, NotFoundError) as e:
        print(f"scalesearch compare: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(d))
    else:
        Console().print(views.comparison_view(d))
    return 0
