"""Optimizers: the reference recipe (AdamW with warmup and cosine) and DiLoCo's outer step.

The reference recipe (DESIGN.md): AdamW with beta1 0.9, beta2 0.99; linear
warmup then cosine decay to 5% of the peak; decoupled weight decay such that
the per-step shrink at peak learning rate is ``1/T`` (T the total number of
steps); global gradient-norm clipping at 1.0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax


def schedule(hp: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """Learning rate per step: linear warmup from 0, then the named decay to ``final_lr_fraction``.

    ``cosine``: half cosine (Loshchilov & Hutter 2017); ``linear``; ``constant``
    (no decay after warmup); ``wsd``: warmup, stable, then linear decay over the
    last ``decay_fraction`` of steps (Hu et al. 2024, MiniCPM).
    """
    peak, total = float(hp["learning_rate"]), max(1, int(total_steps))
    warmup = min(total - 1, int(round(hp["warmup_fraction"] * total)))
    final = peak * float(hp["final_lr_fraction"])
    rest = max(1, total - warmup)
    kind = hp["schedule"]
    if kind == "cosine":
        decay = optax.cosine_decay_schedule(peak, rest, alpha=hp["final_lr_fraction"])
    elif kind == "linear":
        decay = optax.linear_schedule(peak, final, rest)
    elif kind == "constant":
        decay = optax.constant_schedule(peak)
    elif kind == "wsd":
        n_decay = max(1, int(round(hp["decay_fraction"] * total)))
        decay = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, final, n_decay)], [max(0, rest - n_decay)]
        )
    else:
        raise ValueError(f"unknown schedule {kind!r}")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def weight_decay_per_step(hp: Mapping[str, Any], total_steps: int) -> float:
    """Decoupled shrink per step at peak LR: ``hp['weight_decay']``, or ``1/T`` when None.

    References: Wang & Aitchison 2024, "How to set AdamW's weight decay as you
    scale model and dataset size": the EMA timescale ``1/(lr * wd)`` should be a
    fixed fraction of training, here all of it.
    """
    return 1.0 / max(1, int(total_steps)) if hp["weight_decay"] is None else float(hp["weight_decay"])


def _matrices(params):
    """Decay only weight matrices (ndim >= 2), not gains and biases."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def reference_optimizer(hp: Mapping[str, Any], total_steps: int) -> optax.GradientTransformation:
    """The reference AdamW as an optax chain: clip, Adam moments, decoupled decay, schedule."""
    peak = float(hp["learning_rate"])
    parts = [optax.clip_by_global_norm(float(hp["clip"]))] if hp["clip"] else []
    parts += [
        optax.scale_by_adam(b1=float(hp["beta1"]), b2=float(hp["beta2"]), eps=float(hp["eps"])),
        # optax multiplies the decay by the LR; dividing by the peak makes the
        # shrink at peak exactly weight_decay_per_step, and it follows the schedule.
        optax.add_decayed_weights(weight_decay_per_step(hp, total_steps) / peak, mask=_matrices),
        optax.scale_by_learning_rate(schedule(hp, total_steps)),
    ]
    return optax.chain(*parts)


def diloco_outer_optimizer(hp: Mapping[str, Any]) -> optax.GradientTransformation:
    """DiLoCo's outer step: SGD with Nesterov momentum on the averaged parameter deltas.

    References: Douillard et al. 2023, "DiLoCo: Distributed Low-Communication
    Training of Language Models" (outer lr 0.7, momentum 0.9, Nesterov).
    """
    return optax.sgd(float(hp["diloco_outer_lr"]), momentum=float(hp["diloco_outer_momentum"]), nesterov=True)


def tree_mean(tree, axis: int = 0):
    return jax.tree.map(lambda x: jnp.mean(x, axis=axis), tree)
