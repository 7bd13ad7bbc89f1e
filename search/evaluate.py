"""(2) Sandbox: the evaluator the search loop talks to, and its results as database records.

``Evaluator`` is the seam: ``SandboxEvaluator`` runs candidates through the
evaluation cascade in sandboxed workers (``evaluator/``), and
``search.simulate.SimulatedEvaluator`` returns synthetic results instantly for
tests and dry runs. Both hand back ``evaluator.result.EvalResult`` objects.
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from db.rows import RunResult, Stage, Status
from evaluator.result import EvalResult

Curve = Sequence[Sequence[float]]
STAGE_NUMBER = {"static": int(Stage.STATIC), "smoke": int(Stage.SMOKE), "base": int(Stage.BASE), "scaling": int(Stage.SCALING)}


class Evaluator(Protocol):
    isolation: str

    def submit_candidate(
        self, source: str, *, known_fingerprints: Mapping[str, int], incumbent_curves: Sequence[Curve], name: str
    ) -> concurrent.futures.Future:
        """Stages 0 to 2; the future's result has ``.results`` (EvalResults in stage order) and ``.source``."""

    def submit_run(self, source: str, n: float, d: float, seed: int, name: str) -> concurrent.futures.Future:
        """Stage 3 at (N, D); the future's result is one EvalResult."""

    def close(self, cancel: bool = False) -> None: ...


class SandboxEvaluator:
    """The real thing: the evaluation cascade on a pool of sandboxed, pinned workers."""

    def __init__(self, base: tuple[float, float], workers: int, memory_gb: float, corpus: str | None,
                 timeout_scale: float = 1.0, seq_len: int = 0):
        from evaluator.cascade import Cascade, CascadeConfig, ExperimentPoint
        from evaluator.executor import LocalExecutor
        from evaluator.sandbox import SandboxConfig

        self._point = ExperimentPoint
        sandbox = SandboxConfig(memory_limit_bytes=int(memory_gb * 2**30) if memory_gb else None)
        self.executor = LocalExecutor(sandbox, max_workers=workers, corpus=corpus or None)
        self.isolation = str(getattr(self.executor.isolation, "value", self.executor.isolation))
        defaults = CascadeConfig()
        config = CascadeConfig(
            base=ExperimentPoint(int(base[0]), int(base[1])),
            smoke_timeout_s=defaults.smoke_timeout_s * timeout_scale,
            run_overhead_s=defaults.run_overhead_s * timeout_scale,
            min_tokens_per_s=defaults.min_tokens_per_s / timeout_scale,
            seq_len=seq_len,
        )
        self.cascade = Cascade(self.executor, config)

    def submit_candidate(self, source, *, known_fingerprints, incumbent_curves, name):
        return self.cascade.submit(source, known_fingerprints=known_fingerprints, incumbent_curves=incumbent_curves, name=name)

    def submit_run(self, source, n, d, seed, name):
        return self.cascade.submit_scaling_run(source, self._point(int(n), int(d), int(seed)), name=name)

    def close(self, cancel: bool = False) -> None:
        # After a stop the loop has abandoned the jobs in flight (their runs are redone on
        # resume), so cancelling kills them instead of waiting for them to finish.
        self.executor.shutdown(cancel=cancel)


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def run_result(result: EvalResult) -> RunResult:
    """A training stage's EvalResult as the database's RunResult."""
    m = dict(result.metrics or {})
    versions = m.get("versions") or {}
    curve = tuple((float(p[1]), float(p[2])) for p in m.get("curve") or () if len(p) >= 3)
    keep = ("d_model", "n_layers", "n_heads", "steps", "batch_size", "seq_len", "tokens_per_s", "n_embedding",
            "flops_per_token_analytic", "flops_per_token_xla", "hyperparameters", "cores")
    return RunResult(
        status=Status(result.status.value),
        n_params=m.get("n_params"),
        n_active_params=m.get("n_active"),
        n_tokens=m.get("n_tokens"),
        flops_analytic=_finite(m.get("flops")),
        flops_xla=_finite(m.get("flops_xla")),
        final_loss=_finite(m.get("val_loss")) if result.status.value == "ok" else None,
        loss_curve=curve,
        timings={k: m[k] for k in ("compile_s", "train_s", "wall_s") if k in m} | {"stage_wall_s": result.wall_s},
        metrics={k: m[k] for k in keep if k in m},
        jax_version=versions.get("jax"),
        xla_version=versions.get("jaxlib"),
        device=m.get("device"),
        isolation=result.isolation,
        message=result.message or (result.exception or ""),
    )


def final_stage(results: Sequence[EvalResult]) -> int:
    """The cascade stage a candidate reached (the last one attempted)."""
    return STAGE_NUMBER.get(results[-1].stage, 0) if results else 0
