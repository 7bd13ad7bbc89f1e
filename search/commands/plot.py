"""``scalesearch plot DB --out DIR``: PNG figures of the search, the top candidates' laws, and the runs in (N, D)."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plot", help="PNGs: search progress, laws of the top candidates, runs in (N, D)",
                              description=__doc__.split("\n\n")[0].strip("`"))
    p.add_argument("db", metavar="DB", help="the campaign database (SQLite file)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files (created if missing)")
    p.add_argument("-k", type=int, default=5, metavar="K", help="candidates drawn in the law and (N, D) plots (default 5)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from search import inspection, plots
    from search.commands import check_out_folder

    try:
        db = inspection.open_readonly(args.db)
        check_out_folder(args.out)
        paths = plots.plot_campaign(db, args.out, k=max(1, args.k))
    except (inspection.CampaignFileError, OSError) as e:
        print(f"scalesearch plot: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0
