"""N, embedding and active parameter counts, and FLOPs per token: the N and C of L(N, D).

Counts come from the initialised params pytree through ``jax.eval_shape`` (no
FLOPs spent), never from a formula. FLOPs per token are kept two ways: from
XLA's cost analysis of the compiled gradient, and analytically as Kaplan's
``6N + 6 n_layers n_ctx d_model``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from proxy_models import transformer
from proxy_models.config import VOCAB_SIZE, ModelConfig
from proxy_models.program import Program

EMBEDDING_KEYS = ("embed", "unembed", "positions")


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    """Attributes:
    n_params: N, non-embedding parameters (blocks and final norm); for a mixture of
      experts all experts count.
    n_embedding: embedding, unembedding and learned position tables.
    n_active: non-embedding parameters a token actually uses (top-k of E experts).
    """

    n_params: int
    n_embedding: int
    n_active: int


def _size(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _inactive(tree) -> float:
    """Parameters of experts a token does not visit, found by the ``moe_init`` layout."""
    if not isinstance(tree, dict):
        return 0.0
    if "experts" in tree and "top_k" in tree:
        n_experts = tree["router"]["w"].shape[-1]
        top_k = tree["top_k"].shape[-2]
        return _size(tree["experts"]) * (1 - top_k / n_experts)
    return sum(_inactive(v) for v in tree.values())


def count_tree(params) -> ParamCounts:
    """Split a params pytree (concrete or abstract) into N, embedding and active counts."""
    n_embedding = sum(_size(params[k]) for k in EMBEDDING_KEYS if k in params)
    n_params = _size(params) - n_embedding
    return ParamCounts(n_params, n_embedding, int(round(n_params - _inactive(params))))


def abstract_params(program: Program, cfg: ModelConfig):
    """The params pytree's shapes and dtypes, by abstract evaluation of the init (no FLOPs)."""
    return jax.eval_shape(lambda k: transformer.init_model(program, cfg, k), jax.random.key(0))


def count_params(program: Program, cfg: ModelConfig) -> ParamCounts:
    """Counts for ``program`` at shape ``cfg``, by abstract evaluation of the init."""
    return count_tree(abstract_params(program, cfg))


def analytic_flops_per_token(counts: ParamCounts, cfg: ModelConfig) -> float:
    """Training FLOPs per token, ``6 N_active + 6 n_layers n_ctx d_model``.

    References: Kaplan et al. 2020, "Scaling Laws for Neural Language Models",
    Table 1 (forward 2N + 2 n_layer n_ctx d_attn, causal; backward twice forward).
    """
    return 6.0 * counts.n_active + 6.0 * cfg.n_layers * cfg.seq_len * cfg.d_model


def model_flops_per_token(counts: ParamCounts, cfg: ModelConfig) -> float:
    """PaLM's model FLOPs per token for MFU: ``6(N + d V) + 12 n_layers d n_ctx``.

    The unembedding is a real matmul, so it counts; attention is counted without
    the causal halving, as in Chowdhery et al. 2022 (PaLM), Appendix B.
    """
    return 6.0 * (counts.n_active + cfg.d_model * VOCAB_SIZE) + 12.0 * cfg.n_layers * cfg.d_model * cfg.seq_len


def xla_flops_per_token(program: Program, cfg: ModelConfig, params=None) -> float | None:
    """FLOPs per token of one forward and backward pass, from XLA's cost analysis.

    The layer scan is unrolled for this count only: XLA's analysis counts a loop
    body once. Returns None when the backend gives no analysis.
    """
    if params is None:
        params = abstract_params(program, cfg)
    batch = jax.ShapeDtypeStruct((1, cfg.seq_len + 1), jnp.int32)

    def loss(p, b):
        logits, aux = transformer.forward(program, cfg, p, b[:, :-1], unroll=True)
        return jnp.mean(transformer.token_losses(logits, b[:, 1:])[0]) + aux

    try:
        analysis = jax.jit(jax.grad(loss)).lower(params, batch).cost_analysis()
    except Exception:  # noqa: BLE001 - analysis is best effort on some backends
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) / cfg.seq_len if flops and flops > 0 else None
