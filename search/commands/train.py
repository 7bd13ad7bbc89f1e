"""``scalesearch train PROGRAM.py --n N --d D``: train one proxy in this process (trusted code)."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train one proxy of a (trusted) program and print its loss")
    p.add_argument("program", nargs="?", help="program file (default: the reference recipe)")
    p.add_argument("--n", type=float, default=1e5, help="non-embedding parameters N (default 1e5)")
    p.add_argument("--d", type=float, default=5e5, help="training tokens (bytes) D (default 5e5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--corpus", help="folder of text files (default: the Python standard library)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from proxy_models import program as programs
    from proxy_models.data import CorpusError
    from proxy_models.run import train_run

    try:
        source = open(args.program).read() if args.program else programs.seed_source("reference")
        result = train_run(source, args.n, args.d, seed=args.seed, corpus=args.corpus, seq_len=args.seq_len)
    except (OSError, CorpusError, ValueError) as e:
        print(f"scalesearch train: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['status']}: val loss {result['val_loss']} nats/byte | N={result['n_params']} "
            f"(d_model {result['d_model']}, {result['n_layers']} layers) D={result['n_tokens']} "
            f"C={result['flops']:.3g} FLOPs | {result['tokens_per_s']:.0f} tok/s, compile {result['compile_s']:.1f}s"
        )
    return 0 if result["status"] == "ok" else 1
