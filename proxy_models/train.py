"""Train one proxy: a pure jitted step, fused K steps per call, effects in the outer loop.

The step samples its batch inside the compiled program from the corpus held on
the device and a key folded with the step number, so a run is a pure function
of (program, shape, strategy, seed) and the host never copies batches. Several
steps are fused into one ``lax.scan`` per call (``steps_per_call``) to amortise
dispatch, which dominates at proxy sizes on a CPU.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from proxy_models import counting, optim, transformer
from proxy_models.config import ModelConfig, TrainConfig
from proxy_models.data import Corpus, validation_batches
from proxy_models.program import Program, resolve_hyperparameters

AUX_LOSS_WEIGHT = 0.01  # Switch Transformer's load-balancing coefficient
ShouldStop = Callable[[int, float], bool]


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The outcome of one proxy run. ``status`` is ok, diverged or pruned.

    ``curve`` holds (step, tokens, mean train loss over the fused steps ending there);
    ``val_loss`` is nats per byte on the fixed validation windows (NaN unless ok).
    """

    status: str
    message: str
    val_loss: float
    curve: list[tuple[int, int, float]]
    steps: int
    batch_size: int
    seq_len: int
    n_tokens: int
    d_model: int
    n_layers: int
    n_heads: int
    n_params: int
    n_embedding: int
    n_active: int
    flops_per_token_analytic: float
    flops_per_token_xla: float | None
    model_flops_per_token: float
    tokens_per_s: float
    compile_s: float
    train_s: float
    wall_s: float
    hyperparameters: dict[str, Any]
    versions: dict[str, str]
    device: str

    @property
    def flops(self) -> float:
        """C of this run: analytic FLOPs per token times tokens trained."""
        return self.flops_per_token_analytic * self.n_tokens

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["flops"] = self.flops
        d["flops_xla"] = None if self.flops_per_token_xla is None else self.flops_per_token_xla * self.n_tokens
        return d


def plan_steps(n_tokens: int, tokens_per_step: int, steps_per_call: int, curve_points: int) -> tuple[int, int]:
    """(total steps T, steps fused per call K) with K dividing T and at least ``curve_points`` calls.

    T is rounded to a multiple of K, so the D actually trained can differ from the
    request by under K/2 steps; the result reports the exact D.
    """
    wanted = max(1, round(n_tokens / tokens_per_step))
    k = max(1, min(steps_per_call, wanted // curve_points))
    return max(k, round(wanted / k) * k), k


def sample_batch(data: jax.Array, key: jax.Array, batch_size: int, seq_len: int) -> jax.Array:
    """``[batch_size, seq_len + 1]`` int32 windows at uniform random offsets of ``data``."""
    starts = jax.random.randint(key, (batch_size,), 0, data.shape[0] - seq_len - 1)
    windows = jax.vmap(lambda s: jax.lax.dynamic_slice(data, (s,), (seq_len + 1,)))(starts)
    return windows.astype(jnp.int32)


def _grad_fn(program: Program, cfg: ModelConfig, hp):
    loss = lambda p, b: transformer.loss_fn(program, cfg, p, b, hp["z_loss"], AUX_LOSS_WEIGHT)
    return jax.value_and_grad(loss, has_aux=True)


def _update(grad_fn, tx: optax.GradientTransformation, params, opt_state, tokens):
    """One optimizer step on one batch; returns (params, opt_state, cross-entropy)."""
    (_, ce), grads = grad_fn(params, tokens)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, ce


def _replicate(params, m: int):
    """``m`` copies of ``params`` on a new leading axis (DiLoCo's replicas)."""
    return jax.tree.map(lambda g: jnp.broadcast_to(g, (m, *g.shape)), params)


def make_adamw_chunk(program: Program, cfg: ModelConfig, hp, tx: optax.GradientTransformation, k: int):
    """``chunk(state, data, key) -> (state, losses[k])``: k optimizer steps, fused."""
    grad_fn, batch = _grad_fn(program, cfg, hp), int(hp["batch_size"])

    def chunk(state, data, key):
        def one_step(state, _):
            params, opt_state, step = state
            tokens = sample_batch(data, jax.random.fold_in(key, step), batch, cfg.seq_len)
            params, opt_state, ce = _update(grad_fn, tx, params, opt_state, tokens)
            return (params, opt_state, step + 1), ce

        return jax.lax.scan(one_step, state, None, length=k)

    return chunk


def make_diloco_chunk(program: Program, cfg: ModelConfig, hp, inner: optax.GradientTransformation, k: int):
    """DiLoCo simulated on one device: M replicas take H inner steps, then one outer step.

    Each replica trains on its own batches (``batch_size / M`` sequences, so a step
    costs the same tokens as plain AdamW); every H steps the outer Nesterov SGD is
    applied to the mean parameter delta and replicas restart from the new global
    parameters, keeping their inner optimizer states (Douillard et al. 2023).
    """
    m, h = int(hp["diloco_replicas"]), int(hp["diloco_inner_steps"])
    grad_fn, outer = _grad_fn(program, cfg, hp), optim.diloco_outer_optimizer(hp)
    per_replica = int(hp["batch_size"]) // m

    def sync(state):
        global_params, outer_state, replicas, inner_states, step = state
        delta = jax.tree.map(lambda g, r: g - jnp.mean(r, axis=0), global_params, replicas)
        updates, outer_state = outer.update(delta, outer_state, global_params)
        global_params = optax.apply_updates(global_params, updates)
        return global_params, outer_state, _replicate(global_params, m), inner_states, step

    def chunk(state, data, key):
        def inner_step(params, opt_state, replica_key):
            return _update(grad_fn, inner, params, opt_state, sample_batch(data, replica_key, per_replica, cfg.seq_len))

        def one_step(state, _):
            global_params, outer_state, replicas, inner_states, step = state
            keys = jax.random.split(jax.random.fold_in(key, step), m)
            replicas, inner_states, ce = jax.vmap(inner_step)(replicas, inner_states, keys)
            state = (global_params, outer_state, replicas, inner_states, step + 1)
            state = jax.lax.cond((step + 1) % h == 0, sync, lambda s: s, state)
            return state, jnp.mean(ce)

        return jax.lax.scan(one_step, state, None, length=k)

    return chunk


def init_state(program: Program, cfg: ModelConfig, hp, tx, params):
    if hp["optimizer"] == "diloco":
        m = int(hp["diloco_replicas"])
        replicas = _replicate(params, m)
        inner_states = jax.vmap(tx.init)(replicas)
        return (params, optim.diloco_outer_optimizer(hp).init(params), replicas, inner_states, jnp.int32(0))
    return (params, tx.init(params), jnp.int32(0))


def init_params(program: Program, cfg: ModelConfig, key: jax.Array):
    """Initialise in one compiled call at XLA's lowest optimisation level.

    The init runs once, so compile time is all that matters: level 0 halves it.
    """
    init = jax.jit(lambda k: transformer.init_model(program, cfg, k))
    return init.lower(key).compile({"xla_backend_optimization_level": 0})(key)


def build_optimizer(program: Program, hp, total_steps: int) -> optax.GradientTransformation:
    """The program's own optimizer if it defines ``make_optimizer``, else the reference recipe."""
    if program.make_optimizer is not None:
        tx = program.make_optimizer(dict(hp), int(total_steps))
        if not isinstance(tx, optax.GradientTransformation):
            raise ValueError(f"make_optimizer must return an optax.GradientTransformation, got {type(tx).__name__}")
        return tx
    return optim.reference_optimizer(hp, total_steps)


def _check_diloco(hp) -> None:
    m, batch = int(hp["diloco_replicas"]), int(hp["batch_size"])
    if m < 1 or int(hp["diloco_inner_steps"]) < 1 or batch % m:
        raise ValueError(f"DiLoCo needs replicas >= 1 dividing batch_size ({batch}) and inner steps >= 1, got M={m}")


# LLVM at -O2 instead of XLA's default -O3: the dots run in library kernels either
# way, and the generated elementwise loops ran as fast, while the compile of a
# four-layer proxy took 20-25% less time (0.5-0.6 s on 2 cores).
TRAIN_COMPILER_OPTIONS = {"xla_backend_optimization_level": 2}


def compile_chunk(program: Program, cfg: ModelConfig, hp, total_steps: int, k: int, params, corpus: Corpus, key):
    """Build the optimizer and compile the fused k-step call; returns (compiled, state, data, seconds)."""
    tx = build_optimizer(program, hp, total_steps)
    if hp["optimizer"] == "diloco":
        _check_diloco(hp)
        chunk = make_diloco_chunk(program, cfg, hp, tx, k)
    else:
        chunk = make_adamw_chunk(program, cfg, hp, tx, k)
    state = init_state(program, cfg, hp, tx, params)
    data = jnp.asarray(corpus.train)
    t0 = time.perf_counter()
    compiled = jax.jit(chunk, donate_argnums=0).lower(state, data, key).compile(TRAIN_COMPILER_OPTIONS)
    return compiled, state, data, time.perf_counter() - t0


def evaluate(program: Program, cfg: ModelConfig, params, windows: np.ndarray) -> float:
    """Mean cross-entropy (nats per byte) over fixed validation windows."""

    @jax.jit
    def batch_loss(p, b):
        logits, _ = transformer.forward(program, cfg, p, b[:, :-1])
        return jnp.mean(transformer.token_losses(logits, b[:, 1:])[0])

    return float(np.mean([float(batch_loss(params, jnp.asarray(w))) for w in windows]))


def versions() -> dict[str, str]:
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "optax": optax.__version__}


def train(
    program: Program,
    cfg: ModelConfig,
    tcfg: TrainConfig,
    corpus: Corpus,
    should_stop: ShouldStop | None = None,
    on_progress: Callable[[int, int, float], None] | None = None,
    hp: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``program`` at shape ``cfg`` for ``tcfg.n_tokens`` bytes and return the result.

    Args:
      should_stop: called after each fused call with (tokens so far, mean train loss);
        True stops the run as ``pruned`` (the cascade's early stopping).
      on_progress: called with (step, total steps, loss) for progress display.
      hp: the strategy; by default the program's ``hyperparameters`` at this (N, D).

    Raises:
      ValueError: the program breaks the contract (a block that changes the
        shape, a non-finite initialisation, a bad strategy).
    """
    t_start = time.perf_counter()
    key_model, key_data = jax.random.split(jax.random.key(tcfg.seed))
    transformer.check_block(program, cfg, key_model)
    counts = counting.count_params(program, cfg)
    hp = hp if hp is not None else resolve_hyperparameters(program, counts.n_params, tcfg.n_tokens)
    total_steps, k = plan_steps(tcfg.n_tokens, int(hp["batch_size"]) * cfg.seq_len, tcfg.steps_per_call, tcfg.curve_points)
    params = init_params(program, cfg, key_model)
    bad = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(params) if not bool(jnp.all(jnp.isfinite(x)))]
    if bad:
        raise ValueError(f"init_block produced non-finite parameters at {bad[:5]}")

    compiled, state, data, compile_s = compile_chunk(program, cfg, hp, total_steps, k, params, corpus, key_data)

    status, message, curve = "ok", "", []
    limit = tcfg.diverge_factor * math.log(256)
    t0 = time.perf_counter()
    for call in range(total_steps // k):
        state, losses = compiled(state, data, key_data)
        losses = np.asarray(losses)
        step = (call + 1) * k
        tokens = step * int(hp["batch_size"]) * cfg.seq_len
        loss = float(np.mean(losses))
        curve.append((step, tokens, loss))
        if on_progress:
            on_progress(step, total_steps, loss)
        if not np.all(np.isfinite(losses)) or np.max(losses) > limit:
            status, message = "diverged", f"train loss {float(np.max(losses)):.4g} at step {step} (limit {limit:.3g} or non-finite)"
            break
        if should_stop is not None and should_stop(tokens, loss):
            status, message = "pruned", f"stopped at {tokens} tokens: train loss {loss:.4f} behind the incumbents"
            break
    train_s = time.perf_counter() - t0
    trained_tokens = curve[-1][1] if curve else 0

    val_loss = float("nan")
    if status == "ok":
        windows = validation_batches(corpus.val, cfg.seq_len, tcfg.eval_tokens, int(hp["batch_size"]))
        val_loss = evaluate(program, cfg, state[0], windows)
        if not math.isfinite(val_loss):
            status, message = "diverged", "validation loss is not finite"

    return TrainResult(
        status=status,
        message=message,
        val_loss=val_loss,
        curve=curve,
        steps=curve[-1][0] if curve else 0,
        batch_size=int(hp["batch_size"]),
        seq_len=cfg.seq_len,
        n_tokens=trained_tokens,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        n_params=counts.n_params,
        n_embedding=counts.n_embedding,
        n_active=counts.n_active,
        flops_per_token_analytic=counting.analytic_flops_per_token(counts, cfg),
        flops_per_token_xla=counting.xla_flops_per_token(program, cfg),
        model_flops_per_token=counting.model_flops_per_token(counts, cfg),
        tokens_per_s=trained_tokens / train_s if train_s > 0 else 0.0,
        compile_s=compile_s,
        train_s=train_s,
        wall_s=time.perf_counter() - t_start,
        hyperparameters=dict(hp),
        versions=versions(),
        device=str(jax.devices()[0].device_kind),
    )
