"""``python -m search.bench``: run the demo campaign and measure how much of the seed's gap it closed.

All three predictions come from the campaign's final pooled fit, made in this
run: ``seed_gap`` is the weakened seed's predicted loss at C* relative to the
reference recipe's, minus one; ``best_gap`` the same for the best candidate the
search found (the reference itself excluded); ``gap_closed_fraction`` is
``1 - best_gap / seed_gap``. JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time


def measure(db) -> dict:
    from db import query

    programs = query.programs(db)
    fits = query.latest_fits(db)
    seed = next(p for p in programs if p.proposer == "seed")
    ref = next(p for p in programs if p.proposer == "compare")
    counts = query.status_counts(db)["programs"]
    total = sum(counts.values())
    searched = [r for r in query.best_candidates(db) if r.program.proposer != "compare"]
    pred = lambda pid: fits[pid].loss_at_c_star  # noqa: E731
    seed_gap = pred(seed.id) / pred(ref.id) - 1
    best = searched[0]
    best_gap = pred(best.program.id) / pred(ref.id) - 1
    spent = query.spent(db)
    return {
        "candidates": spent.candidates,
        "runs": spent.runs,
        "proxy_flops": spent.flops,
        "fraction_by_status": {s: round(n / total, 3) for s, n in sorted(counts.items())},
        "reference_pred": pred(ref.id),
        "seed_pred": pred(seed.id),
        "best_pred": pred(best.program.id),
        "best_program": best.program.id,
        "best_change": best.program.note,
        "seed_gap": seed_gap,
        "best_gap": best_gap,
        "gap_closed_fraction": 1 - best_gap / seed_gap if seed_gap > 0 else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=32, help="demo budget (a longer campaign: more)")
    parser.add_argument("--dir", default="runs/bench")
    parser.add_argument("--simulate", action="store_true", help="synthetic losses (plumbing check only)")
    parser.add_argument("--seed", type=int, default=0, help="the campaign's seed (a different search from the same start)")
    args = parser.parse_args(argv)

    from db import schema
    from search.campaign import run_campaign
    from search.cli import INTERRUPTED
    from search.config import load_spec
    from search.demo import write_demo

    spec_path = write_demo(pathlib.Path(args.dir), args.candidates, args.simulate, args.seed)
    t0 = time.monotonic()
    # Ctrl-C stops the campaign cleanly, as in `make demo`; a partial campaign is no benchmark,
    # so it prints no figures, and says where the work is for whoever wants to look at it.
    if run_campaign(load_spec(spec_path), install_signals=True) == INTERRUPTED:
        print(f"interrupted: no figures; the partial campaign is in {spec_path.parent} "
              f"(scalesearch status {spec_path.parent / 'campaign.sqlite'})", file=sys.stderr)
        raise SystemExit(INTERRUPTED)
    out = measure(schema.connect(spec_path.parent / "campaign.sqlite"))
    out["seed"] = args.seed
    out["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
    sys.exit(0)
