"""Export a candidate for a real training run: its program, a standalone model.py, config.json and a README.

The numbers come from the campaign's own evidence. The candidate's law is
refitted jointly with every other candidate's runs (the pooled fit that ranks
the campaign, ``active_learning.pooled``), then solved at the requested
compute C for the compute-optimal N and D (and the inference-aware ones when
the model will serve ``inference_tokens``). Intervals on N, D and the loss
come from the fit's Laplace posterior, by sampling it and re-solving the
allocation for each draw. The architecture is the proxy's own shape rule at
that N, and the hyperparameters are the program's strategy evaluated there.

Exporting executes the program (to count its parameters and evaluate its
strategy), as ``scalesearch train`` does; it is checked by the static stage
first, and it already ran in the campaign's sandbox.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import sqlite_utils

from db import query
from db.rows import State, Status

FILES = ("program.py", "model.py", "config.json", "README.md")
POSTERIOR_DRAWS = 1000
LEVEL = 0.9
# XLA on a CPU splits its work by the cores it may use, so the last bits of a loss depend on them: a
# reproduction runs on as many cores as the evaluator's worker had (it pins each to one by default).
WORKER_CORES = 1


class ExportError(ValueError):
    """The candidate cannot be exported as asked; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Export:
    """What ``export`` wrote.

    Attributes:
      out_dir: the folder.
      files: the paths written.
      config: the contents of config.json.
    """

    out_dir: pathlib.Path
    files: tuple[pathlib.Path, ...]
    config: dict


# ----------------------------------------------------------------------------- the law and its allocations


def pooled_fit(db: sqlite_utils.Database, spec: dict):
    """The campaign's pooled fit, refitted from the runs on disk as the judge fits it."""
    from active_learning.pooled import PoolingConfig, fit_pooled
    from search.judge import observations

    varying = tuple(spec.get("fit_varying", ("e", "a", "b")))
    config = PoolingConfig(law=spec.get("fit_law", "chinchilla"), varying=varying,
                           # a campaign recorded before the setting existed was fitted "centred"
                           departures=spec.get("fit_departures", "centred"), level=LEVEL)
    return fit_pooled(observations(db), config)


def law_summary(pooled, cand: str) -> dict[str, Any]:
    """The candidate's law: the paper's parameters with intervals, its FLOPs model, the pool's noise."""
    from active_learning.fit import LOG_SCALED, Estimate, log_normal_estimate

    k = pooled.index(cand)
    theta, sd = pooled.theta[k], np.sqrt(np.maximum(np.diag(pooled.candidate_cov(cand)), 0.0))
    params, intervals = {}, {}
    for name, raw, value, s in zip(pooled.params(cand), pooled.law.param_names, theta, sd):
        if raw in LOG_SCALED or raw.startswith("log_"):
            est = log_normal_estimate(float(value), float(s), pooled.quantile)
        else:
            q = pooled.quantile * float(s)
            est = Estimate(float(value), float(s), float(value) - q, float(value) + q)
        params[name], intervals[name] = est.value, [est.lo, est.hi]
    flops = pooled.flops_models[k]
    return {
        "name": pooled.law_name,
        "form": "L(N, D) = E + A / N^alpha + B / D^beta" if pooled.law_name == "chinchilla" else pooled.law_name,
        "units": "validation loss in nats per byte; N non-embedding parameters; D training tokens (bytes)",
        "params": params,
        "intervals": intervals,
        "level": pooled.level,
        "n_runs": pooled.n_runs[k],
        "campaign_runs": int(sum(pooled.n_runs)),
        "campaign_candidates": len(pooled.candidates),
        "noise_sd_log_loss": math.sqrt(pooled.noise_var),
        "shared": {name: value for name, value in pooled.law.describe(pooled.mean).items()},
        "flops_per_token": {"slope": flops.slope, "intercept": flops.intercept,
                            "meaning": "training FLOPs per token = slope * N + intercept"},
    }


def _interval(values: np.ndarray) -> list[float]:
    tail = 50.0 * (1.0 - LEVEL)
    return [float(np.nanpercentile(values, tail)), float(np.nanpercentile(values, 100.0 - tail))]


def allocation(pooled, cand: str, flops: float, inference_tokens: float, rng: np.random.Generator) -> dict[str, Any]:
    """N, D and the loss at compute ``flops`` for the candidate: posterior intervals, P(best), expected regret."""
    k = pooled.index(cand)
    pred = pooled.predict_at_target(flops, inference_tokens=inference_tokens)[cand]
    draws = pooled.sample(rng, POSTERIOR_DRAWS)
    log_n, log_d, _ = pooled.target_allocation(draws, flops, inference_tokens)
    fpt = float(pooled.flops_models[k].per_token(pred.n_opt))
    standing = pooled.standings(flops, rng, inference_tokens=inference_tokens)[cand]  # as the campaign ranks them
    return {
        "n_params": pred.n_opt,
        "n_params_interval": _interval(np.exp(log_n[:, k])),
        "n_tokens": pred.d_opt,
        "n_tokens_interval": _interval(np.exp(log_d[:, k])),
        "tokens_per_parameter": pred.d_opt / pred.n_opt,
        "predicted_loss": pred.loss,
        "loss_interval": [pred.lo, pred.hi],
        "loss_sd": pred.sd,
        "prob_best": standing.prob_best,
        "expected_regret": standing.expected_regret,
        "inference_tokens": inference_tokens,
        "training_flops": fpt * pred.d_opt,
        "inference_flops": 2.0 * pred.n_opt * inference_tokens,
    }


def architecture(source: str, n_params: float, n_tokens: float, seq_len: int) -> tuple[dict, dict]:
    """The proxy's shape rule at N and the program's strategy at (N, D): (architecture, training) dicts."""
    from proxy_models import counting, shape
    from proxy_models.program import load_program, resolve_hyperparameters
    from proxy_models.train import plan_steps

    program = load_program(source, "exported")
    cfg = shape.choose_shape(program, n_params, seq_len=seq_len)
    counts = counting.count_params(program, cfg)
    hp = resolve_hyperparameters(program, counts.n_params, int(n_tokens))
    tokens_per_step = int(hp["batch_size"]) * cfg.seq_len
    steps, _ = plan_steps(int(n_tokens), tokens_per_step, 8, 24)
    fpt = counting.analytic_flops_per_token(counts, cfg)
    arch = {
        "model_config": dataclasses.asdict(cfg),
        "d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "head_dim": cfg.d_model // cfg.n_heads,
        "seq_len": cfg.seq_len, "n_params": counts.n_params, "n_embedding": counts.n_embedding,
        "n_active": counts.n_active, "flops_per_token": fpt,
    }
    training = {"n_tokens": int(n_tokens), "batch_size": int(hp["batch_size"]), "tokens_per_step": tokens_per_step,
                "total_steps": steps, "training_flops": fpt * int(n_tokens), "hyperparameters": hp}
    return arch, training


def _allocation_with_shape(alloc: dict, source: str, seq_len: int) -> dict:
    try:
        arch, training = architecture(source, alloc["n_params"], alloc["n_tokens"], seq_len)
    except ValueError as e:
        return {**alloc, "architecture": None, "training": None, "architecture_error": str(e)}
    return {**alloc, "architecture": arch, "training": training}


# ----------------------------------------------------------------------------- evidence from the campaign


def reproduce_point(db: sqlite_utils.Database, program_id: int, spec: dict) -> dict | None:
    """The cheapest finished ok run of the program: what model.py should reproduce."""
    runs = [r for r in query.runs(db, program_id, state=State.DONE, status=Status.OK) if r.final_loss is not None]
    if not runs:
        return None
    run = min(runs, key=lambda r: (r.flops or math.inf, r.id))
    seq_len = int((run.metrics or {}).get("seq_len") or spec.get("proxies", {}).get("seq_len", 128))
    corpus = spec.get("proxies", {}).get("corpus") or None
    cores = int((run.metrics or {}).get("cores") or WORKER_CORES)
    args = ["--n-params", repr(float(run.n_target)), "--n-tokens", str(int(run.d_target)), "--seed", str(run.seed),
            "--seq-len", str(seq_len)] + (["--corpus", corpus] if corpus else [])
    pin = f"taskset -c {','.join(map(str, range(cores)))} " if cores else ""
    return {"run_id": run.id, "n_target": run.n_target, "d_target": run.d_target, "seed": run.seed,
            "seq_len": seq_len, "corpus": corpus, "cores": cores, "n_params": run.n_params, "n_tokens": run.n_tokens,
            "val_loss": run.final_loss, "device": run.device, "jax_version": run.jax_version,
            "args": args, "command": f"{pin}python model.py " + " ".join(args)}


def proxy_runs(db: sqlite_utils.Database, program_id: int) -> list[dict]:
    return [{"run_id": r.id, "status": str(r.status), "stage": r.stage, "n_params": r.n_params, "n_tokens": r.n_tokens,
             "flops": r.flops, "seed": r.seed, "val_loss": r.final_loss}
            for r in query.runs(db, program_id, state=State.DONE)]


def _campaign_ranking(db: sqlite_utils.Database, program_id: int) -> dict | None:
    ranked = query.best_candidates(db)
    for rank, r in enumerate(ranked, 1):
        if r.program.id == program_id:
            f = r.fit
            return {"rank": rank, "of": len(ranked), "c_star": f.c_star, "loss_at_c_star": f.loss_at_c_star,
                    "loss_interval": [f.loss_low, f.loss_high], "prob_best": f.prob_best,
                    "expected_regret": f.expected_regret, "fit_round": f.round}
    return None


# ----------------------------------------------------------------------------- config.json and README.md


def build_config(
    db: sqlite_utils.Database, program_id: int, target_flops: float, inference_tokens: float = 0.0, *,
    rng: np.random.Generator, db_path: str = "",
) -> dict[str, Any]:
    """Everything config.json holds (see the README for the meaning of each part)."""
    from evaluator.static import static_stage

    if not (math.isfinite(target_flops) and target_flops > 0):
        raise ExportError(f"--target-flops must be a positive number of FLOPs, got {target_flops}")
    if not (math.isfinite(inference_tokens) and inference_tokens >= 0):
        raise ExportError(f"--inference-tokens must be >= 0, got {inference_tokens}")
    campaign = query.campaign(db)
    spec = campaign.spec if campaign else {}
    program = query.program(db, program_id)
    if program.status is not Status.OK:
        raise ExportError(f"program {program_id} ended with status {program.status or 'pending'}; only ok programs "
                          "have a law to export (see `scalesearch top`)")
    static, _ = static_stage(program.source)
    if static.status.value != "ok":
        raise ExportError(f"program {program_id} fails the static check: {static.message}")
    pooled = pooled_fit(db, spec)
    cand = str(program_id)
    if cand not in pooled.candidates:
        raise ExportError(f"program {program_id} has no finished ok runs, so no fitted law")
    seq_len = int(spec.get("proxies", {}).get("seq_len", 128))
    allocations = {"compute_optimal": allocation(pooled, cand, target_flops, 0.0, rng)}
    if inference_tokens > 0:
        allocations["inference_aware"] = allocation(pooled, cand, target_flops, inference_tokens, rng)
    allocations = {k: _allocation_with_shape(v, program.source, seq_len) for k, v in allocations.items()}
    runs = proxy_runs(db, program_id)
    largest = max((r["flops"] or 0.0 for r in runs if r["status"] == "ok"), default=0.0)
    return {
        "exported": {"database": db_path, "campaign": campaign.name if campaign else None, "program_id": program_id,
                     "proposer": program.proposer, "parent_ids": list(program.parent_ids), "note": program.note,
                     "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "target": {"flops": target_flops, "inference_tokens": inference_tokens,
                   "extrapolation": target_flops / largest if largest else None},
        "recommended": "inference_aware" if inference_tokens > 0 else "compute_optimal",
        "allocations": allocations,
        "law": law_summary(pooled, cand),
        "campaign_ranking": _campaign_ranking(db, program_id),
        "proxy_runs": runs,
        "reproduce": reproduce_point(db, program_id, spec),
    }


def _g(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def readme(config: dict) -> str:
    """A short README: what was exported, how the numbers were obtained, and how sure they are."""
    e, t, law = config["exported"], config["target"], config["law"]
    rec = config["allocations"][config["recommended"]]
    arch, training = rec.get("architecture"), rec.get("training")
    p, iv = law["params"], law["intervals"]
    level = round(100 * law["level"])
    lines = [
        f"# scalesearch export: program {e['program_id']} of campaign {e['campaign']!r}",
        "",
        "Files: `program.py` (the candidate as the search evolved it), `model.py` (standalone JAX + optax: the proxy's",
        "own model, optimizer, data sampling and training step with the program inlined; no scalesearch import),",
        "`config.json` (everything below, machine-readable).",
        "",
        f"## Recommendation at C = {_g(t['flops'])} FLOPs ({config['recommended'].replace('_', '-')})",
        "",
        f"- N = {_g(rec['n_params'])} non-embedding parameters ({level}% interval {_g(rec['n_params_interval'][0])} to "
        f"{_g(rec['n_params_interval'][1])}), D = {_g(rec['n_tokens'])} training tokens ({_g(rec['n_tokens_interval'][0])} "
        f"to {_g(rec['n_tokens_interval'][1])}), {rec['tokens_per_parameter']:.3g} tokens per parameter.",
        f"- Predicted loss {rec['predicted_loss']:.4f} nats/byte, {level}% interval [{rec['loss_interval'][0]:.4f}, "
        f"{rec['loss_interval'][1]:.4f}]; probability of being the campaign's best at this C: "
        f"{_g(rec['prob_best'], 2)}; expected loss above the campaign's best there (expected regret): "
        f"{100.0 * rec['expected_regret']:.2f}%.",
    ]
    if t["inference_tokens"]:
        co = config["allocations"]["compute_optimal"]
        lines.append(f"- Serving {_g(t['inference_tokens'])} tokens costs 2N FLOPs each, inside C; the compute-optimal "
                     f"choice ignoring inference would be N = {_g(co['n_params'])}, D = {_g(co['n_tokens'])}.")
    if arch:
        lines.append(f"- Architecture by the proxy's shape rule: d_model {arch['d_model']}, {arch['n_layers']} layers, "
                     f"{arch['n_heads']} heads, context {arch['seq_len']} (exact N = {arch['n_params']:,}); batch "
                     f"{training['batch_size']} sequences, {training['total_steps']:,} steps; learning rate "
                     f"{training['hyperparameters']['learning_rate']:.3g} from the program's `hyperparameters(N, D)`.")
    else:
        lines.append(f"- No architecture: {rec.get('architecture_error')}")
    lines += [
        "",
        "## How the numbers were obtained",
        "",
        f"The law {law['form']} was fitted by maximum likelihood on log loss (Student-t noise with a fitted scale) to",
        f"this candidate's {law['n_runs']} proxy runs jointly with the campaign's {law['campaign_runs']} runs of "
        f"{law['campaign_candidates']} candidates: E and the exponents are shared, each candidate's A and B depart "
        "from the pool under a fitted prior.",
        f"Its parameters: E = {p['E']:.3g} [{iv['E'][0]:.3g}, {iv['E'][1]:.3g}], A = {p['A']:.3g} [{iv['A'][0]:.3g}, "
        f"{iv['A'][1]:.3g}], alpha = {p['alpha']:.3f} [{iv['alpha'][0]:.3f}, {iv['alpha'][1]:.3f}], B = {p['B']:.3g} "
        f"[{iv['B'][0]:.3g}, {iv['B'][1]:.3g}], beta = {p['beta']:.3f} [{iv['beta'][0]:.3f}, {iv['beta'][1]:.3f}] "
        f"({level}% Laplace intervals); noise sd of log loss {law['noise_sd_log_loss']:.3g}."
        if "E" in p else f"Its parameters: {json.dumps(p)}.",
        "N and D minimise the law subject to training FLOPs (slope N + intercept per token, fitted to the runs' counts)",
        "plus 2N per served token = C; their intervals come from re-solving that for draws of the fitted posterior.",
        "",
        "## How sure",
        "",
        f"C is {_g(t['extrapolation'], 2)} times the compute of this candidate's largest proxy run. The intervals",
        "assume the law's form holds all the way out; they cover the fit's uncertainty, not a change of regime,",
        "and the hyperparameters at this scale are the program's own extrapolation, never tried there.",
        "Proxy losses vary 1 to 5% from seed to seed at a few hundred steps (DESIGN.md).",
    ]
    ranking = config["campaign_ranking"]
    if ranking:
        lines.append(f"In the campaign it ranked {ranking['rank']} of {ranking['of']} at C* = {_g(ranking['c_star'])} "
                     f"(predicted {ranking['loss_at_c_star']:.4f}, P(best) {_g(ranking['prob_best'], 2)}).")
    rep = config["reproduce"]
    if rep:
        lines += ["", "## Check it", "", "`model.py` trains exactly as the proxy did. This reproduces the campaign's run "
                  f"{rep['run_id']} (val loss {rep['val_loss']:.6f} nats/byte) on {rep['cores']} core(s), as its "
                  "worker had (XLA's CPU results depend on the cores it may use in the last digits):", "",
                  f"    {rep['command']}", "",
                  "`python model.py` alone trains at the recommended scale; `python model.py --help` lists the options."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- writing and checking


def export(
    db: sqlite_utils.Database, program_id: int, target_flops: float, out_dir: str | os.PathLike, *,
    inference_tokens: float = 0.0, db_path: str = "", seed: int = 0,
) -> Export:
    """Write program.py, model.py, config.json and README.md for ``program_id`` into ``out_dir``.

    Raises:
      ExportError: the program is not ok, has no runs, or the arguments are wrong.
      db.record.NotFoundError: no such program.
    """
    from search.standalone import model_py

    config = build_config(db, program_id, target_flops, inference_tokens, rng=np.random.default_rng(seed),
                          db_path=db_path)
    source = query.program(db, program_id).source
    doc = (f"Program {program_id} of scalesearch campaign {config['exported']['campaign']!r}, standalone.\n\n"
           "Generated by `scalesearch export` from the proxy's own source (proxy_models) and the program;\n"
           "it needs only JAX, optax and NumPy. See README.md and config.json beside it.")
    out = pathlib.Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    contents = {"program.py": source, "model.py": model_py(source, f"scalesearch-{program_id}", doc),
                "config.json": json.dumps(config, indent=2, default=str) + "\n", "README.md": readme(config)}
    for name, text in contents.items():
        (out / name).write_text(text)
    return Export(out, tuple(out / name for name in FILES), config)


ISOLATED_RUNNER = """
import importlib.abc, os, runpy, sys
if {cores!r} and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {cores!r})
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {forbidden!r}:
            raise ImportError(f"model.py must not import {{name}}")
sys.meta_path.insert(0, Refuse())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def isolated_command(model: str | os.PathLike, args: list[str], cores: int | None = None) -> list[str]:
    """Run ``model.py`` with ``python -I`` and an import hook that refuses this project's packages.

    Args:
      cores: pin the process to this many of our cores before JAX starts (None: all of them).
    """
    from search.standalone import FORBIDDEN_IMPORTS

    pinned = sorted(os.sched_getaffinity(0))[: max(1, cores)] if cores and hasattr(os, "sched_getaffinity") else []
    code = ISOLATED_RUNNER.format(forbidden=FORBIDDEN_IMPORTS, cores=pinned)
    return [sys.executable, "-I", "-c", code, str(model), *args]


def verify(result: Export, timeout_s: float = 1800) -> dict[str, Any]:
    """Train the exported model.py in an isolated process at the reproduce point; compare with the campaign."""
    rep = result.config["reproduce"]
    if rep is None:
        raise ExportError("the program has no finished ok run to reproduce")
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "result.json"
        cmd = isolated_command(result.out_dir / "model.py", [*rep["args"], "--out", str(out)],
                               cores=rep.get("cores") or WORKER_CORES)
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not out.exists():
            raise ExportError(f"model.py failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        got = json.loads(out.read_text())
    return {"run_id": rep["run_id"], "cores": rep.get("cores"), "campaign_loss": rep["val_loss"],
            "model_py_loss": got["val_loss"],
            "abs_error": abs(got["val_loss"] - rep["val_loss"]), "n_params": got["n_params"], "n_tokens": got["n_tokens"]}
