"""``scalesearch eval PROGRAM.py``: one candidate through the sandboxed evaluation cascade."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="run one program through the evaluation cascade (static, smoke, base run) in the sandbox"
    )
    p.add_argument("program", help="candidate program file")
    p.add_argument("--n", type=float, default=1e5, help="non-embedding parameters N of the base run (default 1e5)")
    p.add_argument("--d", type=float, default=5e5, help="training tokens (bytes) D of the base run (default 5e5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-gib", type=float, default=8.0, help="address-space limit per worker (default 8)")
    p.add_argument("--corpus", help="folder of text files (default: the Python standard library)")
    p.add_argument("--runner", default="proxy_models.run", help=argparse.SUPPRESS)  # tests swap in a fake
    p.add_argument("--json", action="store_true", help="print the full result, isolation level included, as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from evaluator import Cascade, CascadeConfig, ExperimentPoint, LocalExecutor, SandboxConfig, SandboxError

    try:
        with open(args.program) as f:
            source = f.read()
        point = ExperimentPoint(int(args.n), int(args.d), args.seed)
        config = SandboxConfig(memory_limit_bytes=int(args.memory_gib * 2**30))
    except (OSError, ValueError) as e:
        print(f"scalesearch eval: {e}", file=sys.stderr)
        return 2
    try:
        with LocalExecutor(config, runner=args.runner, max_workers=1, spares=False, corpus=args.corpus) as executor:
            outcome = Cascade(executor, CascadeConfig(base=point)).evaluate(source, name=args.program)
            isolation = executor.isolation
    except (SandboxError, OSError, ValueError) as e:
        print(f"scalesearch eval: the sandbox failed: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"program": args.program, "isolation": isolation.to_dict(), **outcome.to_dict()}))
    else:
        _print_outcome(outcome, isolation)
    return 0 if outcome.status.is_ok() else 1


def _print_outcome(outcome, isolation) -> None:
    for r in outcome.results:
        m = r.metrics
        detail = ""
        if r.stage == "smoke" and r.ok:
            detail = f"N={m.get('n_params')} FLOPs/token={m.get('flops_per_token_analytic')} fingerprint={m.get('fingerprint')}"
        elif r.stage in ("base", "scaling") and "val_loss" in m:
            detail = (
                f"val loss {m.get('val_loss')} nats/byte | N={m.get('n_params')} D={m.get('n_tokens')} "
                f"C={m.get('flops', 0):.3g} | compile {m.get('compile_s', 0):.1f}s train {m.get('train_s', 0):.1f}s"
            )
        print(f"{r.stage:7s} {r.status.value:13s} {r.wall_s:7.1f}s  {detail or r.message}")
        if not r.ok and r.traceback:
            print("        " + r.traceback.strip().splitlines()[-1])
    print(f"status: {outcome.status.value}  isolation: {isolation}")
