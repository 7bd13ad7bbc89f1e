"""The proxy language model: byte embedding, a scanned stack of candidate blocks, unembedding.

The blocks come from a candidate program (``init_block``/``apply_block``); the
scaffolding around them is fixed so that every candidate is measured the same way.
Layer parameters are stacked on a leading axis and applied with ``jax.lax.scan``,
so compile time does not grow with depth.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from proxy_models import layers
from proxy_models.config import VOCAB_SIZE, ModelConfig
from proxy_models.program import Program

Params = dict

# Layers per scan iteration. A scanned layer loop costs XLA on CPU a dynamic slice
# of every stacked weight and a stacked copy of every residual kept for the
# backward pass; at proxy sizes that was 20-30% of a step. Unrolling up to four
# layers removes it for the usual proxy depths, and compile time still stops
# growing with depth beyond four.
UNROLL_LAYERS = 4


def layer_unroll(n_layers: int) -> int:
    """How many layers one iteration of the layer scan applies."""
    return max(1, min(n_layers, UNROLL_LAYERS))


def init_model(program: Program, cfg: ModelConfig, key: jax.Array) -> Params:
    """Initialise every parameter; blocks are stacked on a leading ``[n_layers]`` axis.

    The embedding has unit variance (blocks normalise their inputs); the untied
    unembedding starts small (std ``0.1/sqrt(D)``, in the spirit of muP's zero
    readout, Yang et al. 2021) so the initial prediction is near uniform and the
    initial loss near ``ln 256``.
    """
    k_emb, k_blocks, k_out, k_pos = jax.random.split(key, 4)
    blocks = [program.init_block(k, cfg.block) for k in jax.random.split(k_blocks, cfg.n_layers)]
    params = {
        "embed": jax.random.normal(k_emb, (VOCAB_SIZE, cfg.d_model), jnp.float32),
        "blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks),
        "final_norm": layers.norm_init(cfg.final_norm, cfg.d_model),
    }
    if not cfg.tie_embeddings:
        params["unembed"] = layers.dense_init(k_out, cfg.d_model, VOCAB_SIZE, scale=0.1)["w"]
    if cfg.positions == "learned":
        params["positions"] = layers.learned_positions_init(k_pos, cfg.seq_len, cfg.d_model)["table"]
    return params


def apply_blocks(program: Program, cfg: ModelConfig, blocks: Params, x: jax.Array, unroll: int | bool | None = None):
    """Run the block stack over ``x`` ``[B, S, D]``; returns ``(x, summed auxiliary loss)``.

    ``unroll`` is the scan's unroll factor; by default ``layer_unroll(n_layers)``.
    """
    unroll = layer_unroll(cfg.n_layers) if unroll is None else unroll

    def body(h, block_params):
        out = program.apply_block(block_params, h, cfg.block)
        h_next, aux = out if isinstance(out, tuple) else (out, jnp.zeros((), jnp.float32))
        return h_next.astype(h.dtype), jnp.asarray(aux, jnp.float32)

    x, aux = jax.lax.scan(body, x, blocks, unroll=unroll)
    return x, jnp.sum(aux)


def forward(program: Program, cfg: ModelConfig, params: Params, tokens: jax.Array, unroll: int | bool | None = None):
    """``tokens`` ``[B, S]`` int32 -> ``(logits [B, S, 256], aux loss)``."""
    x = params["embed"][tokens]  # [B, S, D]
    if cfg.positions == "learned":
        x = x + params["positions"][: tokens.shape[1]]
    x, aux = apply_blocks(program, cfg, params["blocks"], x, unroll)
    x = layers.norm(params["final_norm"], x)
    if cfg.tie_embeddings:
        # A unit-variance embedding read out directly would give logits of std
        # sqrt(D); T5's d_model^-1/2 rescaling of tied readouts (Raffel et al. 2020,
        # Mesh TensorFlow) makes them std 1. muP's 1/D (Yang et al. 2021), tried
        # first, assumes muP's learning rates too: under the programs' standard Adam
        # the readout learnt D times slower, and a tied proxy ended at 4.64 nats/byte
        # where the untied one reached 2.33 (N 5e4, D 5e5); with 1/sqrt(D), 2.61.
        logits = layers.matmul(x, params["embed"].T) / cfg.d_model**0.5
    else:
        logits = layers.matmul(x, params["unembed"])
    return logits, aux


def token_losses(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token cross-entropy in nats and ``logsumexp`` of the logits (for the z-loss)."""
    lse = jax.nn.logsumexp(logits, axis=-1)  # [B, S]
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return lse - picked, lse


def loss_fn(program: Program, cfg: ModelConfig, params: Params, batch: jax.Array, z_loss: float, aux_weight: float):
    """Training objective on a ``[B, S+1]`` byte batch; returns ``(objective, cross-entropy)``.

    The z-loss ``z * mean(logsumexp(logits)^2)`` keeps the softmax normaliser near
    zero (Chowdhery et al. 2022, PaLM; Wortsman et al. 2023).
    """
    logits, aux = forward(program, cfg, params, batch[:, :-1])
    ce, lse = token_losses(logits, batch[:, 1:])
    ce = jnp.mean(ce)
    return ce + z_loss * jnp.mean(jnp.square(lse)) + aux_weight * aux, ce


def check_block(program: Program, cfg: ModelConfig, key: jax.Array) -> None:
    """Fail early, with a clear message, when a block breaks the contract (no FLOPs spent)."""
    x = jax.ShapeDtypeStruct((2, cfg.seq_len, cfg.d_model), jnp.float32)
    p = jax.eval_shape(lambda k: program.init_block(k, cfg.block), key)
    out = jax.eval_shape(lambda p_, x_: program.apply_block(p_, x_, cfg.block), p, x)
    y = out[0] if isinstance(out, tuple) else out
    if not hasattr(y, "shape") or tuple(y.shape) != tuple(x.shape):
        got = getattr(y, "shape", type(y).__name__)
        raise ValueError(f"apply_block must return x with the shape it was given {tuple(x.shape)}, got {got}")
    if isinstance(out, tuple) and (len(out) != 2 or getattr(out[1], "shape", None) not in ((), None)):
        raise ValueError("apply_block may return x or (x, aux_loss) with a scalar aux_loss")
