"""``scalesearch export DB ID --target-flops C --out DIR``: a candidate as files a training codebase can take.

Writes program.py, a standalone model.py (JAX and optax only), config.json (architecture and hyperparameters at
the recommended N and D for C, the fitted law with intervals, the predicted loss) and a README.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a candidate's program, standalone model.py, config.json, README",
                              description=__doc__.split("\n\n")[0].strip("`"))
    p.add_argument("db", metavar="DB", help="the campaign database (SQLite file)")
    p.add_argument("id", type=int, metavar="ID", help="program id (see `scalesearch top`)")
    p.add_argument("--target-flops", type=float, metavar="C", help="training compute to plan for (default: the campaign's C*)")
    p.add_argument("--inference-tokens", type=float, default=0.0, metavar="T",
                   help="tokens the model will serve: also give the inference-aware N and D, and recommend them")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write into (created if missing)")
    p.add_argument("--verify", action="store_true", help="train the exported model.py (isolated) at the program's "
                   "cheapest proxy run and compare its loss with the campaign's")
    p.add_argument("--json", action="store_true", help="print config.json (and the verification) to stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from db import query
    from db.record import NotFoundError
    from search import export, inspection
    from search.commands import check_out_folder

    try:
        db = inspection.open_readonly(args.db)
        campaign = query.campaign(db)
        target = args.target_flops if args.target_flops is not None else (campaign.spec.get("target_flops") if campaign else None)
        if target is None:
            raise export.ExportError("give --target-flops (the campaign has no target compute)")
        check_out_folder(args.out)
        result = export.export(db, args.id, float(target), args.out, inference_tokens=args.inference_tokens,
                               db_path=args.db)
        check = export.verify(result) if args.verify else None
    except (inspection.CampaignFileError, NotFoundError, export.ExportError, OSError) as e:
        print(f"scalesearch export: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"config": result.config, "verify": check}, default=str))
        return 0
    rec = result.config["allocations"][result.config["recommended"]]
    arch = rec.get("architecture") or {}
    print(f"wrote {', '.join(str(p) for p in result.files)}")
    print(f"program {args.id} at C = {target:.3g} FLOPs ({result.config['recommended'].replace('_', '-')}): "
          f"N = {rec['n_params']:.3g}, D = {rec['n_tokens']:.3g}, predicted loss {rec['predicted_loss']:.4f} "
          f"[{rec['loss_interval'][0]:.4f}, {rec['loss_interval'][1]:.4f}]"
          + (f"; d_model {arch['d_model']}, {arch['n_layers']} layers" if arch else ""))
    if check:
        print(f"verify: model.py {check['model_py_loss']:.6f} vs campaign run {check['run_id']} "
              f"{check['campaign_loss']:.6f} nats/byte (|difference| {check['abs_error']:.2e})")
        return 0 if check["abs_error"] <= 1e-5 else 1
    return 0
