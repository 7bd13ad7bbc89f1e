"""``python -m evaluator.bench``: what the evaluator costs per candidate, and what the cascade saves.

Trains the reference program once as the incumbent, then sends a mixed batch
through the cascade one candidate at a time (broken, duplicate, clearly worse,
good) and prints, as JSON on its last line:

- ``overhead_s``: median over the sandboxed candidates of the wall time the
  parent waited minus the time spent inside the runner's ``smoke`` and
  ``train_run`` (compiling, training, and the harness's own shape search and
  validation): the sandbox, the warm-worker hand-off, the program transfer,
  the result channel and the clean-up. Target: <= 1.0 s.
- ``harness_other_s``: median runner time that is neither compile nor training
  (reported separately; it belongs to ``proxy_models``, not to the sandbox).
- ``isolation``: the active sandbox level.
- ``flops_saved_fraction``: 1 - (FLOPs the cascade spent) / (FLOPs of training
  every candidate that a plain pipeline would have trained, fully, at the base
  (N, D)). Broken programs cost a plain pipeline nothing either (they fail on
  import or at the first step), so the savings come from duplicates and pruning.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time

from evaluator.cascade import Cascade, CascadeConfig, CascadeOutcome, ExperimentPoint, flops_spent
from evaluator.executor import LocalExecutor
from evaluator.result import Status
from evaluator.sandbox import SandboxConfig


def _sub(source: str, pattern: str, replacement: str, count: int = 0) -> str:
    new = re.sub(pattern, replacement, source, count=count)
    if new == source:
        raise ValueError(f"bench: could not apply {pattern!r} to the reference program (has it changed?)")
    return new


def _lr(source: str, lr: str) -> str:
    return _sub(source, r'"learning_rate":\s*[0-9.eE+-]+', f'"learning_rate": {lr}')


def _apply_return(source: str, expr: str) -> str:
    """Make apply_block return ``expr`` (in terms of its final ``x``)."""
    head, tail = source.split("def apply_block", 1)
    return head + "def apply_block" + _sub(tail, r"\n(\s+)return x\n", rf"\n\1return {expr}\n", count=1)


def candidates(reference: str) -> dict[str, str]:
    """The mixed batch, derived from the reference so it tracks the current recipe."""
    renamed = _sub(reference, r"\bk_attn\b", "key_attention")
    renamed = _sub(renamed, r"\bout_scale = ", "branch_scale = ")
    renamed = _sub(renamed, r"=out_scale\b", "=branch_scale")
    renamed = _sub(renamed, r"# EVOLVE-BLOCK-START model", "# EVOLVE-BLOCK-START model\n# a renamed copy: same computation")
    reformatted = "\n\n".join(reference.split("\n\n")) + "\n# trailing comment\n"
    reformatted = reformatted.replace("def init_block(key, cfg):", "def init_block(key,   cfg):  # reformatted")
    return {
        "lower_lr_2e-3": _lr(reference, "2e-3"),
        "good_lr_4e-3": _lr(reference, "4e-3"),
        "good_warmup_10pct": _sub(reference, r'"warmup_fraction":\s*[0-9.]+', '"warmup_fraction": 0.1'),
        "good_relu2_mlp": _sub(reference, r'"gelu"\)', '"relu2")'),
        "duplicate_renamed": renamed,
        "duplicate_reformatted": reformatted,
        "worse_lr_1e-5": _lr(reference, "1e-5"),
        "worse_lr_3e-6": _lr(reference, "3e-6"),
        "broken_shape": _apply_return(reference, "x[..., :-1]"),
        "broken_nan": _apply_return(reference, "x * jnp.nan"),
        "broken_import_error": reference + '\nraise RuntimeError("broken at import time")\n',
        "broken_syntax": reference.replace("def apply_block(params, x, cfg):", "def apply_block(params, x, cfg)"),
        "broken_forbidden": "import os\n" + reference,
    }


def summarize(
    outcomes: dict[str, CascadeOutcome], walls: dict[str, float], incumbent: CascadeOutcome, n_tokens: int
) -> dict:
    """The bench's numbers from the outcomes (pure; see the module docstring for definitions)."""
    overheads, other, spent, full, per_candidate = [], [], 0.0, 0.0, {}
    ref_base = incumbent.stage("base").metrics
    ref_full = float(ref_base.get("flops_per_token_analytic") or 0) * n_tokens
    for name, outcome in outcomes.items():
        sandboxed = [r for r in outcome.results if r.stage != "static"]
        if sandboxed:
            runner = sum(float(r.metrics.get("runner_s") or 0) for r in sandboxed)
            overheads.append(walls[name] - runner)
            per_candidate[name] = round(walls[name] - runner, 4)
            base = outcome.stage("base")
            if base is not None and "compile_s" in base.metrics:
                m = base.metrics
                other.append(float(m["runner_s"]) - float(m.get("compile_s") or 0) - float(m.get("train_s") or 0))
        spent += outcome.flops_spent
        base = outcome.stage("base")
        if outcome.status is Status.DUPLICATE:
            full += ref_full
        elif base is not None and base.metrics.get("flops_per_token_analytic"):
            full += float(base.metrics["flops_per_token_analytic"]) * n_tokens
    return {
        "overhead_s": round(statistics.median(overheads), 4) if overheads else None,
        "overhead_max_s": round(max(overheads), 4) if overheads else None,
        "n_sandboxed": len(overheads),
        "harness_other_s": round(statistics.median(other), 3) if other else None,
        "flops_saved_fraction": round(1 - spent / full, 4) if full else None,
        "flops_spent": spent,
        "flops_train_everything": full,
        "statuses": {name: o.status.value for name, o in outcomes.items()},
        "overhead_by_candidate_s": per_candidate,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluator.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=float, default=2e4, help="N of the base run (default 2e4)")
    parser.add_argument("--d", type=float, default=1e5, help="D of the base run (default 1e5)")
    parser.add_argument("--memory-gib", type=float, default=8.0)
    args = parser.parse_args(argv)

    from proxy_models.program import seed_source

    point = ExperimentPoint(int(args.n), int(args.d))
    config = SandboxConfig(memory_limit_bytes=int(args.memory_gib * 2**30))
    with LocalExecutor(config, max_workers=1, cores_per_worker=len(_cores())) as executor:
        cascade = Cascade(executor, CascadeConfig(base=point))
        reference = seed_source("reference")
        incumbent = cascade.evaluate(reference, name="incumbent")
        if incumbent.status is not Status.OK:
            print(json.dumps({"error": f"the reference program did not pass: {incumbent.message}"}))
            return 1
        known = {incumbent.fingerprint: "incumbent"}
        outcomes, walls = {}, {}
        for name, source in candidates(reference).items():
            t0 = time.perf_counter()
            outcome = cascade.evaluate(source, name=name, known_fingerprints=known, incumbent_curves=[incumbent.curve])
            walls[name] = time.perf_counter() - t0
            outcomes[name] = outcome
            if outcome.fingerprint and outcome.status is not Status.DUPLICATE:
                known[outcome.fingerprint] = name
            spent = sum(flops_spent(r) for r in outcome.results)
            print(f"{name:24s} {outcome.status.value:13s} {walls[name]:6.1f}s  {spent:9.3g} FLOPs  {outcome.message[:90]}")
            sys.stdout.flush()
        summary = summarize(outcomes, walls, incumbent, point.n_tokens)
        summary.update(isolation=str(executor.isolation), n_params=point.n_params, n_tokens=point.n_tokens)
    print(json.dumps(summary))
    return 0


def _cores() -> list[int]:
    import os

    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]


if __name__ == "__main__":
    sys.exit(main())
