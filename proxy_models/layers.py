"""Building blocks that candidate programs may call: norms, attention, MLPs, MoE.

Every layer is a pair of pure functions in the picoGPT style: ``*_init(key, ...)``
returns a nested dict of arrays and the layer itself maps ``(params, x)`` to an
output. Shapes are written ``[batch, seq, d_model]`` as ``[B, S, D]``.

Static choices (head counts, top-k) are read from array *shapes* in the params
pytree, never stored as numbers in it, so that the harness can count parameters
with ``jax.eval_shape`` and the optimizer never sees an integer leaf.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Params = dict
Array = jax.Array

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": jax.nn.gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),
}


def activation(name: str) -> Callable[[Array], Array]:
    """The activation function called ``name`` (gelu, relu, silu, tanh, relu2)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


# ----------------------------------------------------------------------------- dense


def dense_init(key: Array, d_in: int, d_out: int, scale: float = 1.0) -> Params:
    """A bias-free linear map with fan-in (LeCun normal) initialisation times ``scale``."""
    std = scale / math.sqrt(d_in)
    return {"w": std * jax.random.normal(key, (d_in, d_out), jnp.float32)}


def matmul(x: Array, w: Array) -> Array:
    """``[..., d_in] @ [d_in, d_out]`` as one 2-D matmul.

    XLA's CPU backend runs the weight gradient of a 3-D ``x @ w`` (a contraction
    over batch and sequence together) several times slower than the same
    product on ``x`` flattened to 2-D, so every dense map flattens first.
    """
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


def dense(p: Params, x: Array) -> Array:
    """``[..., d_in] -> [..., d_out]``."""
    return matmul(x, p["w"])


# ----------------------------------------------------------------------------- norms


def rms_norm_init(d: int) -> Params:
    """RMSNorm gain, initialised to one (Zhang & Sennrich 2019)."""
    return {"scale": jnp.ones((d,), jnp.float32)}


def rms_norm(p: Params, x: Array, eps: float = 1e-6) -> Array:
    """``x / rms(x) * scale`` over the last axis."""
    ms = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(ms + eps) * p["scale"]


def layer_norm_init(d: int) -> Params:
    """LayerNorm gain and bias (Ba et al. 2016)."""
    return {"scale": jnp.ones((d,), jnp.float32), "bias": jnp.zeros((d,), jnp.float32)}


def layer_norm(p: Params, x: Array, eps: float = 1e-5) -> Array:
    """Normalise the last axis to zero mean and unit variance, then scale and shift."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def norm_init(kind: str, d: int) -> Params:
    """``rms`` or ``layer`` norm parameters; the kind is recoverable from the keys."""
    if kind == "rms":
        return rms_norm_init(d)
    if kind == "layer":
        return layer_norm_init(d)
    raise ValueError(f"unknown norm {kind!r}; choose 'rms' or 'layer'")


def norm(p: Params, x: Array) -> Array:
    """Apply whichever norm ``p`` holds (LayerNorm if it has a bias, else RMSNorm)."""
    return layer_norm(p, x) if "bias" in p else rms_norm(p, x)


# ----------------------------------------------------------------------------- positions


def rotary(x: Array, base: float = 10000.0) -> Array:
    """Rotary position embedding on ``[B, S, H, Dh]`` (Su et al. 2021, RoFormer).

    Rotates pairs (i, i + Dh/2) by angle ``pos * base^(-2i/Dh)``; ``Dh`` must be even.
    """
    seq, head_dim = x.shape[-3], x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"rotary needs an even head dimension, got {head_dim}")
    half = head_dim // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [Dh/2]
    angles = jnp.arange(seq, dtype=jnp.float32)[:, None] * freqs  # [S, Dh/2]
    cos, sin = jnp.cos(angles)[:, None, :], jnp.sin(angles)[:, None, :]  # [S, 1, Dh/2]
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def learned_positions_init(key: Array, seq_len: int, d: int) -> Params:
    """A learned absolute position table ``[S, D]`` (GPT-2 style), std 0.02."""
    return {"table": 0.02 * jax.random.normal(key, (seq_len, d), jnp.float32)}


def learned_positions(p: Params, x: Array) -> Array:
    """Add the first ``S`` rows of the table to ``x`` of shape ``[B, S, D]``."""
    return x + p["table"][: x.shape[1]]


# ----------------------------------------------------------------------------- attention


def attention_init(
    key: Array,
    d_model: int,
    n_heads: int,
    n_kv_heads: int | None = None,
    qk_norm: bool = True,
    out_scale: float = 1.0,
) -> Params:
    """Causal multi-head attention with optional grouped-query heads and QK-LayerNorm.

    Grouped-query attention (Ainslie et al. 2023) shares each key/value head across
    ``n_heads // n_kv_heads`` query heads. QK-LayerNorm (Dehghani et al. 2023;
    Wortsman et al. 2023) normalises queries and keys per head. The head counts
    live in the shapes: ``q`` is ``[D, H, Dh]`` and ``kv`` is ``[D, 2, Hkv, Dh]``.
    """
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    if d_model % n_heads:
        raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads {n_heads} is not divisible by n_kv_heads {n_kv_heads}")
    head_dim = d_model // n_heads
    kq, kkv, ko = jax.random.split(key, 3)
    std = 1.0 / math.sqrt(d_model)
    p = {
        "q": std * jax.random.normal(kq, (d_model, n_heads, head_dim), jnp.float32),
        "kv": std * jax.random.normal(kkv, (d_model, 2, n_kv_heads, head_dim), jnp.float32),
        "o": (out_scale / math.sqrt(d_model)) * jax.random.normal(ko, (n_heads, head_dim, d_model), jnp.float32),
    }
    if qk_norm:
        p["q_norm"] = layer_norm_init(head_dim)
        p["k_norm"] = layer_norm_init(head_dim)
    return p


def attention(p: Params, x: Array, rope: bool = True, rope_base: float = 10000.0) -> Array:
    """``[B, S, D] -> [B, S, D]`` causal self-attention; rotary positions unless ``rope=False``."""
    d, h, dh = p["q"].shape
    h_kv = p["kv"].shape[2]
    q = matmul(x, p["q"].reshape(d, h * dh)).reshape(*x.shape[:-1], h, dh)  # [B, S, H, Dh]
    kv = matmul(x, p["kv"].reshape(d, 2 * h_kv * dh)).reshape(*x.shape[:-1], 2, h_kv, dh)
    k, v = kv[..., 0, :, :], kv[..., 1, :, :]  # [B, S, Hkv, Dh]
    if "q_norm" in p:
        q, k = layer_norm(p["q_norm"], q), layer_norm(p["k_norm"], k)
    if rope:
        q, k = rotary(q, rope_base), rotary(k, rope_base)
    out = jax.nn.dot_product_attention(q, k, v, is_causal=True)  # [B, S, H, Dh]; groups GQA heads
    return matmul(out.reshape(*x.shape[:-1], h * dh), p["o"].reshape(h * dh, d))


# ----------------------------------------------------------------------------- MLPs


def mlp_init(key: Array, d_model: int, d_ff: int, glu: bool = False, out_scale: float = 1.0) -> Params:
    """A two-layer MLP; with ``glu`` a gated linear unit (Shazeer 2020, GLU variants)."""
    k_in, k_gate, k_out = jax.random.split(key, 3)
    p = {"w_in": dense_init(k_in, d_model, d_ff), "w_out": dense_init(k_out, d_ff, d_model, out_scale)}
    if glu:
        p["w_gate"] = dense_init(k_gate, d_model, d_ff)
    return p


def mlp(p: Params, x: Array, activation_name: str = "gelu") -> Array:
    """``[..., D] -> [..., D]``: ``act(x W_in) W_out``, or ``(act(x W_gate) * x W_in) W_out`` for a GLU."""
    act = activation(activation_name)
    h = dense(p["w_in"], x)  # [..., F]
    h = act(dense(p["w_gate"], x)) * h if "w_gate" in p else act(h)
    return dense(p["w_out"], h)


def swiglu_init(key: Array, d_model: int, d_ff: int | None = None) -> Params:
    """SwiGLU MLP (Shazeer 2020); default width ``8/3 D`` keeps the parameter count of a 4D MLP."""
    d_ff = d_ff if d_ff is not None else max(8, int(round(8 * d_model / 3 / 8)) * 8)
    return mlp_init(key, d_model, d_ff, glu=True)


def swiglu(p: Params, x: Array) -> Array:
    """SwiGLU: a GLU with the SiLU (swish) gate."""
    return mlp(p, x, "silu")


# ----------------------------------------------------------------------------- mixture of experts


def moe_init(key: Array, d_model: int, d_ff: int, n_experts: int, top_k: int = 2, glu: bool = False) -> Params:
    """Top-k mixture of expert MLPs (Shazeer et al. 2017; Fedus et al. 2022, Switch).

    ``top_k`` is stored as the shape of an empty leaf (``[k, 0]``): zero parameters,
    but static, so ``moe`` and the active-parameter count can read it.
    """
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k must be in [1, n_experts={n_experts}], got {top_k}")
    k_router, *k_experts = jax.random.split(key, n_experts + 1)
    experts = [mlp_init(k, d_model, d_ff, glu) for k in k_experts]
    return {
        "router": dense_init(k_router, d_model, n_experts, scale=0.1),
        "experts": jax.tree.map(lambda *xs: jnp.stack(xs), *experts),  # leading axis E
        "top_k": jnp.zeros((top_k, 0), jnp.float32),
    }


def moe(p: Params, x: Array, activation_name: str = "gelu") -> tuple[Array, Array]:
    """``[B, S, D] -> ([B, S, D], load-balancing loss)``.

    Each token goes to its top-k experts, weighted by renormalised router
    probabilities. The auxiliary loss is Switch Transformer's ``E * sum_e f_e P_e``
    (fraction of tokens routed to e times mean router probability of e), which is
    1 under perfect balance. Experts are evaluated densely and masked: at proxy
    scale that is faster on CPU than a gather/scatter dispatch, and the result
    is identical.
    """
    n_experts, top_k = p["router"]["w"].shape[1], p["top_k"].shape[0]
    probs = jax.nn.softmax(dense(p["router"], x), axis=-1)  # [B, S, E]
    top_p, top_i = jax.lax.top_k(probs, top_k)  # [B, S, k]
    gates = jnp.sum(jax.nn.one_hot(top_i, n_experts) * (top_p / jnp.sum(top_p, -1, keepdims=True))[..., None], -2)
    outs = jax.vmap(lambda e: mlp(e, x, activation_name))(p["experts"])  # [E, B, S, D]
    y = jnp.sum(outs * jnp.moveaxis(gates, -1, 0)[..., None], axis=0)
    routed = jnp.mean(jnp.sum(jax.nn.one_hot(top_i, n_experts), -2), axis=(0, 1)) / top_k  # f_e
    aux = n_experts * jnp.sum(routed * jnp.mean(probs, axis=(0, 1)))
    return y, aux
