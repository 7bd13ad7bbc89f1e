"""Evaluator: the sandbox and the evaluation cascade (static -> smoke -> base run -> scaling runs).

The search loop's entry points::

    from evaluator import Cascade, CascadeConfig, ExperimentPoint, LocalExecutor, SandboxConfig

    with LocalExecutor(SandboxConfig()) as executor:
        cascade = Cascade(executor, CascadeConfig(base=ExperimentPoint(100_000, 500_000)))
        future = cascade.submit(source, known_fingerprints=..., incumbent_curves=...)
        outcome = future.result()          # CascadeOutcome: .status, .results, .fingerprint, .curve
        more = cascade.scaling_runs(source, [ExperimentPoint(300_000, 1_000_000)])

Names are imported lazily so that ``import evaluator`` stays cheap (the
sandboxed worker imports parts of this package too).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Cascade": "evaluator.cascade",
    "CascadeConfig": "evaluator.cascade",
    "CascadeOutcome": "evaluator.cascade",
    "ExperimentPoint": "evaluator.cascade",
    "EarlyStopping": "evaluator.early_stopping",
    "Executor": "evaluator.executor",
    "LocalExecutor": "evaluator.executor",
    "Job": "evaluator.protocol",
    "StageSpec": "evaluator.protocol",
    "EvalResult": "evaluator.result",
    "Status": "evaluator.result",
    "Isolation": "evaluator.sandbox",
    "SandboxConfig": "evaluator.sandbox",
    "SandboxError": "evaluator.sandbox",
    "probe_isolation": "evaluator.sandbox",
    "check": "evaluator.static",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'evaluator' has no attribute {name!r}")
