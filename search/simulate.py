"""A simulated evaluator: the cascade's shape with synthetic losses, for tests and dry runs.

Each program gets its own Chinchilla-form law (Hoffmann et al. 2022), a
deterministic perturbation of a law calibrated to the proxies measured in
DESIGN.md, chosen by a hash of the program's normalised source, plus 1%
log-normal seed noise from a hash of (program, N, D, seed). The static stage is
the real one, so invalid programs fail as they would for real. Nothing is
trained; results arrive after ``delay_s`` on a thread pool, so runners can be
tested with work in flight.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import math
import time

import numpy as np

from evaluator.result import EvalResult, Status
from evaluator.static import static_stage
from search.programs import normalise

BASE_LAW = {"E": 0.7, "A": 15.0, "alpha": 0.3, "B": 268.0, "beta": 0.4}
NOISE = 0.01


def _unit(*parts) -> np.random.Generator:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def program_law(source: str) -> dict[str, float]:
    """The synthetic law of a program, a pure function of its normalised source."""
    u = _unit("law", normalise(source)).uniform(-1, 1, 5)
    return {
        "E": BASE_LAW["E"] * (1 + 0.05 * u[0]),
        "A": BASE_LAW["A"] * math.exp(0.3 * u[1]),
        "alpha": BASE_LAW["alpha"] + 0.03 * u[2],
        "B": BASE_LAW["B"] * math.exp(0.3 * u[3]),
        "beta": BASE_LAW["beta"] + 0.03 * u[4],
    }


def simulated_loss(source: str, n: float, d: float, seed: int) -> float:
    law = program_law(source)
    mean = law["E"] + law["A"] / n ** law["alpha"] + law["B"] / d ** law["beta"]
    return float(mean * math.exp(NOISE * _unit("noise", normalise(source), int(n), int(d), seed).standard_normal()))


def _run_metrics(source: str, n: float, d: float, seed: int) -> dict:
    loss = simulated_loss(source, n, d, seed)
    curve = [[k, int(d * k / 20), loss + (math.log(256) - loss) * (1 - k / 20) ** 2] for k in range(1, 21)]
    flops = 6.0 * n * d
    return {
        "val_loss": loss, "curve": curve, "n_params": int(n), "n_active": int(n), "n_tokens": int(d),
        "flops": flops, "flops_xla": 1.3 * flops, "flops_per_token_analytic": 6.0 * n,
        "versions": {"jax": "simulated", "jaxlib": "simulated"}, "device": "simulated",
    }


class SimulatedEvaluator:
    """Drop-in for ``SandboxEvaluator`` that trains nothing.

    Args:
      base: the base (N, D).
      workers: results computed concurrently.
      delay_s: seconds each stage takes (0 for instant).
    """

    isolation = "simulated"

    def __init__(self, base: tuple[float, float], workers: int = 2, delay_s: float = 0.0):
        self.base, self.delay_s = base, delay_s
        self.pool = concurrent.futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix="simulated")

    def _stage(self, name: str, status: Status, metrics: dict, message: str = "") -> EvalResult:
        if self.delay_s:
            time.sleep(self.delay_s)
        return EvalResult(name, status, message, metrics, wall_s=self.delay_s, isolation=self.isolation)

    def _cascade(self, static, repaired: str, known_fingerprints, name: str):
        if not static.ok:
            return _Outcome(repaired, (static,))
        fingerprint = hashlib.sha256(normalise(repaired).encode()).hexdigest()[:32]
        smoke = self._stage("smoke", Status.OK, {"fingerprint": fingerprint, "n_params": int(self.base[0])})
        if fingerprint in known_fingerprints:
            dup = self._stage("smoke", Status.DUPLICATE, {"fingerprint": fingerprint}, f"duplicate of {known_fingerprints[fingerprint]}")
            return _Outcome(repaired, (static, dup))
        base = self._stage("base", Status.OK, _run_metrics(repaired, *self.base, 0))
        return _Outcome(repaired, (static, smoke, base))

    def submit_candidate(self, source, *, known_fingerprints, incumbent_curves, name):
        static, repaired = static_stage(source)  # in the caller's thread, as the real cascade does
        return self.pool.submit(self._cascade, static, repaired, dict(known_fingerprints), name)

    def submit_run(self, source, n, d, seed, name):
        return self.pool.submit(lambda: self._stage("scaling", Status.OK, _run_metrics(source, n, d, seed)))

    def close(self, cancel: bool = False) -> None:
        self.pool.shutdown(wait=not cancel, cancel_futures=cancel)


class _Outcome:
    def __init__(self, source: str, results: tuple[EvalResult, ...]):
        self.source, self.results = source, results
