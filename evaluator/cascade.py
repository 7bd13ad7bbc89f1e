"""The evaluation cascade (DESIGN.md): each stage costs more than the last and can stop a candidate.

0. static: ``evaluator.static``, in this process, milliseconds;
1. smoke: one worker inits the program at a tiny shape, runs one forward and
   backward pass, measures N and FLOPs per token and fingerprints the traced
   computation; a fingerprint the caller already knows, or one a candidate
   submitted before it reported, ends it as ``duplicate`` (``evaluator.twins``);
2. base: a short proxy run at the campaign's cheapest (N, D), pruned early
   when its learning curve falls clearly behind the incumbents' at the same
   (N, D) (``evaluator.early_stopping``);
3. scaling: further (N, D) runs that active learning asks for, one job each.

Stages 1 and 2 run in the same warm worker, back to back, so a candidate pays
for one sandbox. Every outcome, failures included, comes back as results.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable, Mapping, Sequence

from evaluator.early_stopping import EarlyStopping
from evaluator.executor import Executor
from evaluator.protocol import Curve, Job, StageSpec, fingerprint_map
from evaluator.result import EvalResult, Status
from evaluator.static import static_stage
from evaluator.twins import Twins

STATIC_ISOLATION = "static: not executed"


@dataclasses.dataclass(frozen=True)
class ExperimentPoint:
    """One proxy run's size: N non-embedding parameters, D training tokens, a seed."""

    n_params: int
    n_tokens: int
    seed: int = 0

    def __post_init__(self):
        if self.n_params <= 0 or self.n_tokens <= 0:
            raise ValueError(f"n_params and n_tokens must be positive, got {self.n_params}, {self.n_tokens}")


@dataclasses.dataclass(frozen=True)
class CascadeConfig:
    """Attributes:
    base: the campaign's cheapest (N, D), where every candidate is trained once.
    smoke_timeout_s: wall-clock limit for the smoke stage (tracing and compiling included).
    run_overhead_s: the fixed part of a training stage's limit (shape search, compile, validation).
    min_tokens_per_s: the variable part: a run slower than this is a timeout
      (limit = run_overhead_s + D / min_tokens_per_s).
    early_stopping: how the base run is pruned against the incumbents (None: never).
    seq_len: the proxies' context length (0: the runner's default).
    """

    base: ExperimentPoint = ExperimentPoint(100_000, 500_000)
    smoke_timeout_s: float = 300.0
    run_overhead_s: float = 300.0
    min_tokens_per_s: float = 500.0
    early_stopping: EarlyStopping | None = EarlyStopping()
    seq_len: int = 0

    def __post_init__(self):
        if self.smoke_timeout_s <= 0 or self.run_overhead_s <= 0 or self.min_tokens_per_s <= 0:
            raise ValueError(f"cascade limits must be positive: {self}")

    def run_timeout_s(self, point: ExperimentPoint) -> float:
        return self.run_overhead_s + point.n_tokens / self.min_tokens_per_s


@dataclasses.dataclass(frozen=True)
class CascadeOutcome:
    """Everything the cascade learned about one candidate.

    Attributes:
      name: the caller's label.
      source: the program as run (after the static stage's repairs).
      results: the static result, then one per stage attempted, in order.
    """

    name: str
    source: str
    results: tuple[EvalResult, ...]

    @property
    def status(self) -> Status:
        """The status of the last stage attempted (ok only if every stage passed)."""
        return self.results[-1].status

    @property
    def message(self) -> str:
        return self.results[-1].message

    def stage(self, name: str) -> EvalResult | None:
        return next((r for r in self.results if r.stage == name), None)

    @property
    def fingerprint(self) -> str | None:
        smoke = self.stage("smoke")
        return None if smoke is None else smoke.metrics.get("fingerprint")

    @property
    def curve(self) -> Curve | None:
        """The base run's learning curve, for use as an incumbent curve later."""
        base = self.stage("base")
        return None if base is None else base.metrics.get("curve")

    @property
    def flops_spent(self) -> float:
        return sum(flops_spent(r) for r in self.results)

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status.value, "results": [r.to_dict() for r in self.results]}


def flops_spent(result: EvalResult) -> float:
    """Training FLOPs a stage consumed: the run's C for the tokens it trained (smoke: one tiny batch)."""
    m = result.metrics
    if "flops" in m and m["flops"] is not None:
        return float(m["flops"])
    if result.stage == "smoke" and m.get("flops_per_token_analytic"):
        seq_len = (m.get("shape") or {}).get("seq_len", 32)
        return float(m["flops_per_token_analytic"]) * 2 * seq_len
    return 0.0


class Cascade:
    """Runs candidates through stages 0 to 3 on an ``Executor``.

    Args:
      executor: where stages 1 to 3 run (``LocalExecutor`` for this machine).
      config: the base (N, D), limits and early stopping.
    """

    def __init__(self, executor: Executor, config: CascadeConfig = CascadeConfig()):
        self.executor, self.config = executor, config
        self.twins = Twins(wait_s=config.smoke_timeout_s)

    def submit(
        self,
        source: str,
        *,
        known_fingerprints: Mapping[str, str] | Sequence[str] | None = None,
        incumbent_curves: Sequence[Curve] = (),
        name: str = "candidate",
        base: ExperimentPoint | None = None,
    ) -> concurrent.futures.Future[CascadeOutcome]:
        """Stages 0 to 2 for one candidate; returns at once with a future.

        Args:
          source: the program.
          known_fingerprints: fingerprints of programs already evaluated (a mapping
            to their ids, or a collection); a match ends the candidate as duplicate,
            as does a match with a candidate submitted to this cascade before it.
          incumbent_curves: the best programs' base-run curves at the same (N, D),
            ``[[step, tokens, train_loss], ...]`` each; empty disables pruning.
          name: a label for messages.
          base: override the configured base (N, D).
        """
        static, repaired = static_stage(source)
        static = dataclasses.replace(static, isolation=STATIC_ISOLATION)
        if not static.ok:
            done: concurrent.futures.Future[CascadeOutcome] = concurrent.futures.Future()
            done.set_result(CascadeOutcome(name, repaired, (static,)))
            return done
        point = base or self.config.base
        stopping = None
        if self.config.early_stopping is not None and incumbent_curves:
            stopping = {**self.config.early_stopping.to_dict(), "curves": [list(map(list, c)) for c in incumbent_curves]}
        stages = (
            StageSpec("smoke", "smoke", self.config.smoke_timeout_s),
            StageSpec("base", "train", self.config.run_timeout_s(point), point.n_params, point.n_tokens, point.seed,
                      stopping, self.config.seq_len),
        )
        job = Job(repaired, stages, fingerprint_map(known_fingerprints), name)
        number = self.twins.enter()
        future = _then(self.executor.submit(job, gate=lambda smoke: self._twin(number, name, point, smoke)),
                       lambda rs: CascadeOutcome(name, repaired, (static, *rs)))
        # However it ends (failed smoke, cancelled), later candidates must not wait for it.
        future.add_done_callback(lambda f: self.twins.settle(number, name, _twin_key(_fingerprint(f), point)))
        return future

    def _twin(self, number: int, name: str, point: ExperimentPoint, smoke: EvalResult) -> EvalResult | None:
        """After a passed smoke stage: a duplicate result if a candidate submitted earlier traced the same."""
        fingerprint = smoke.metrics.get("fingerprint")
        key = _twin_key(fingerprint, point)
        twin = self.twins.twin_of(number, key) if key else None
        self.twins.settle(number, name, key)
        if twin is None:
            return None
        return dataclasses.replace(
            smoke, status=Status.DUPLICATE, metrics={**smoke.metrics, "duplicate_of": twin},
            message=f"same computation and strategy as {twin}, submitted before it (fingerprint {fingerprint}): not trained",
        )  # fmt: skip

    def evaluate(self, source: str, **kwargs) -> CascadeOutcome:
        """``submit(...).result()``: the whole cascade for one candidate, blocking."""
        return self.submit(source, **kwargs).result()

    def submit_scaling_run(
        self, source: str, point: ExperimentPoint, name: str = "candidate"
    ) -> concurrent.futures.Future[EvalResult]:
        """Stage 3: one more training run at ``point`` for a candidate that passed stage 2."""
        spec = StageSpec("scaling", "train", self.config.run_timeout_s(point), point.n_params, point.n_tokens, point.seed,
                         seq_len=self.config.seq_len)
        return _then(self.executor.submit(Job(source, (spec,), {}, name)), lambda rs: rs[-1])

    def scaling_runs(self, source: str, points: Sequence[ExperimentPoint], name: str = "candidate") -> list[EvalResult]:
        """Stage 3 at several points, concurrently on the executor; results in ``points`` order."""
        futures = [self.submit_scaling_run(source, p, name) for p in points]
        return [f.result() for f in futures]


def _twin_key(fingerprint: str | None, point: ExperimentPoint) -> str | None:
    """Twins trace the same computation and train at the same base (N, D)."""
    return fingerprint and f"{fingerprint} at {point.n_params}, {point.n_tokens}, {point.seed}"


def _fingerprint(future: concurrent.futures.Future) -> str | None:
    if future.cancelled() or future.exception() is not None:
        return None
    return future.result().fingerprint


def _then(future: concurrent.futures.Future, fn: Callable) -> concurrent.futures.Future:
    """A future for ``fn(future.result())``; exceptions pass through."""
    out: concurrent.futures.Future = concurrent.futures.Future()

    def done(f: concurrent.futures.Future) -> None:
        try:
            out.set_result(fn(f.result()))
        except BaseException as e:  # noqa: BLE001 - re-raised by out.result()
            out.set_exception(e)

    future.add_done_callback(done)
    return out
