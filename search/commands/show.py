"""``scalesearch show DB ID``: one program: source, diff against its parent, runs, fitted law and lineage."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("show", help="one program: source, diff, runs, law, lineage",
                              description=__doc__.split("\n\n")[0].strip("`"))
    p.add_argument("db", metavar="DB", help="the campaign database (SQLite file)")
    p.add_argument("id", type=int, metavar="ID", help="program id")
    p.add_argument("--no-source", action="store_true", help="leave out the full source")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from db.record import NotFoundError
    from search import inspection, views

    try:
        detail = inspection.program_detail(inspection.open_readonly(args.db), args.id)
    except (inspection.CampaignFileError, NotFoundError) as e:
        print(f"scalesearch show: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(detail))
    else:
        console = Console()
        console.print(views.program_view(detail, source=not args.no_source, width=console.width))
    return 0
