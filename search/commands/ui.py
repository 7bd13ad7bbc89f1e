"""``scalesearch ui DB``: browse the campaign in Datasette on 127.0.0.1, read-only, with canned queries.

Queries: leaderboard (predicted loss at C*), lineage (a program and its ancestors), failures_by_status and
failures. Needs the optional extra: pip install 'scalesearch[ui]'.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("ui", help="Datasette over the campaign (read-only, 127.0.0.1)",
                              description=__doc__.split("\n\n")[0].strip("`"))
    p.add_argument("db", metavar="DB", help="the campaign database (SQLite file)")
    p.add_argument("--port", type=int, default=8001, help="port on 127.0.0.1 (default 8001)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--immutable", action="store_true", help="serve immutable even if a runner has the file open")
    mode.add_argument("--live", action="store_true", help="serve through read-only connections, seeing new rows "
                      "(the default while a runner has the file open)")
    p.add_argument("--open", action="store_true", help="open a browser")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from search import datasette_ui, inspection

    try:
        inspection.open_readonly(args.db).conn.close()
    except inspection.CampaignFileError as e:
        print(f"scalesearch ui: {e}", file=sys.stderr)
        return 2
    if not datasette_ui.available():
        print(f"scalesearch ui: {datasette_ui.INSTALL_HINT}", file=sys.stderr)
        return 2
    immutable = args.immutable or not (args.live or datasette_ui.is_live(args.db))
    with tempfile.TemporaryDirectory() as tmp:
        meta = datasette_ui.write_metadata(args.db, tmp)
        cmd = datasette_ui.serve_command(args.db, meta, port=args.port, immutable=immutable, open_browser=args.open)
        name = datasette_ui.database_name(args.db)
        how = "immutable" if immutable else "live, read-only connections"
        print(f"serving {args.db} ({how}) at http://{datasette_ui.HOST}:{args.port}/{name}  "
              f"leaderboard: http://{datasette_ui.HOST}:{args.port}/{name}/leaderboard  (Ctrl-C stops)")
        try:
            return subprocess.call(cmd)
        except KeyboardInterrupt:
            return 0
