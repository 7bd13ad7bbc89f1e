"""Entry points for the evaluator's worker: smoke-test and train a candidate from source.

These take program *source* and plain numbers and return plain dicts, so they
can run in a sandboxed process and send their results back as JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from proxy_models import counting, shape, train, transformer
from proxy_models.config import ModelConfig, TrainConfig
from proxy_models.data import load_corpus
from proxy_models.program import Program, effective_hyperparameters, load_program, resolve_hyperparameters

SMOKE_SHAPE = dict(d_model=64, n_layers=2, n_heads=2, seq_len=32)
FINGERPRINT_SCALES = ((1e5, 1e6), (1e6, 2e7), (1e8, 2e9))  # (N, D) at which the strategy is sampled


def _jaxpr_text(program: Program, cfg: ModelConfig, params, batch) -> str:
    def loss(p, b):
        return transformer.loss_fn(program, cfg, p, b, 1e-4, train.AUX_LOSS_WEIGHT)[0]

    text = str(jax.make_jaxpr(jax.grad(loss))(params, batch))
    # Names of jitted sub-functions come from the source; the computation does not.
    return re.sub(r"name=[\w<>.]+", "name=_", text)


def fingerprint(program: Program, cfg: ModelConfig, params, batch) -> str:
    """A hash of the traced computation and of the strategy at several scales.

    Two programs that differ only in names, comments or formatting trace to the
    same jaxpr and return the same hyperparameters, so they share a fingerprint.
    """
    h = hashlib.sha256(_jaxpr_text(program, cfg, params, batch).encode())
    for n, d in FINGERPRINT_SCALES:
        hp = resolve_hyperparameters(program, int(n), int(d))
        if program.make_optimizer is None:  # a program's own optimizer may read any setting
            hp = effective_hyperparameters(hp)
        h.update(json.dumps(hp, sort_keys=True, default=repr).encode())
    if program.make_optimizer is not None:
        hp = resolve_hyperparameters(program, 10**5, 10**6)
        tx = program.make_optimizer(dict(hp), 100)
        opt_state = tx.init(params)
        h.update(re.sub(r"name=[\w<>.]+", "", str(jax.make_jaxpr(tx.update)(params, opt_state, params))).encode())
    return h.hexdigest()[:32]


def smoke(source: str, seed: int = 0) -> dict[str, Any]:
    """Stage 1: init, one forward and backward at a tiny shape, counts, FLOPs, fingerprint.

    Raises:
      ProgramError / ValueError: the contract is broken or the loss is not finite.
    """
    program = load_program(source)
    base = ModelConfig(**SMOKE_SHAPE)
    cfg = shape.model_config(program, base.d_model, base.n_layers, base.seq_len)
    key = jax.random.key(seed)
    transformer.check_block(program, cfg, key)
    params = train.init_params(program, cfg, key)
    batch = jax.random.randint(jax.random.fold_in(key, 1), (2, cfg.seq_len + 1), 0, 256, jnp.int32)
    hp = resolve_hyperparameters(program, 10**5, 10**6)
    # One compiled call at the lowest optimisation level: it runs once, so compile time is the cost.
    grad_fn = jax.jit(jax.value_and_grad(
        lambda p, b: transformer.loss_fn(program, cfg, p, b, hp["z_loss"], train.AUX_LOSS_WEIGHT), has_aux=True))
    (loss, ce), grads = grad_fn.lower(params, batch).compile({"xla_backend_optimization_level": 0})(params, batch)
    if not math.isfinite(float(loss)):
        raise ValueError(f"smoke test: the loss at initialisation is not finite ({float(loss)})")
    grad_norm = float(jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))))
    if not math.isfinite(grad_norm):
        raise ValueError("smoke test: the gradient at initialisation is not finite")
    counts = counting.count_params(program, cfg)
    return {
        "loss": float(ce),
        "grad_norm": grad_norm,
        "n_params": counts.n_params,
        "n_embedding": counts.n_embedding,
        "n_active": counts.n_active,
        "flops_per_token_xla": counting.xla_flops_per_token(program, cfg, params),
        "flops_per_token_analytic": counting.analytic_flops_per_token(counts, cfg),
        "fingerprint": fingerprint(program, cfg, params, batch),
        "shape": {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "seq_len": cfg.seq_len},
    }


def train_run(
    source: str,
    n_params: float,
    n_tokens: float,
    seed: int = 0,
    corpus: str | None = None,
    should_stop: Callable[[int, float], bool] | None = None,
    seq_len: int = 128,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Train ``source`` at the shape nearest ``n_params`` for ``n_tokens`` bytes; a plain dict."""
    program = load_program(source)
    cfg = shape.choose_shape(program, n_params, seq_len=seq_len)
    tcfg = TrainConfig(n_tokens=int(n_tokens), seed=int(seed))
    result = train.train(program, cfg, tcfg, load_corpus(corpus), should_stop=should_stop, on_progress=on_progress)
    out = result.to_dict()
    out["curve"] = [list(point) for point in result.curve]
    out["val_loss"] = None if np.isnan(result.val_loss) else result.val_loss
    # XLA's CPU results depend in the last digits on the cores it may use: record them for exact reproduction.
    out["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return out
