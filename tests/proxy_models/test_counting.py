"""N is counted from the params, never guessed: hand counts, shape rule, MoE active count."""

import pytest

from proxy_models import counting, shape
from proxy_models.config import VOCAB_SIZE, ModelConfig
from proxy_models.program import load_program, seed_source


def reference_block_count(d: int, n_heads: int, mlp_ratio: int = 4, n_kv: int | None = None) -> int:
    """Hand count of the reference block: attention, QK-LayerNorm, two RMSNorms, MLP."""
    dh = d // n_heads
    n_kv = n_heads if n_kv is None else n_kv
    attention = d * d + 2 * d * n_kv * dh + d * d  # q, kv, o
    qk_norm = 2 * (2 * dh)  # LayerNorm gain and bias on queries and keys
    norms = 2 * d
    mlp = 2 * d * mlp_ratio * d
    return attention + qk_norm + norms + mlp


@pytest.mark.parametrize("d,layers,heads", [(64, 2, 1), (128, 4, 2), (256, 4, 4), (768, 12, 12)])
def test_reference_counts_match_hand_counts(reference, d, layers, heads):
    cfg = ModelConfig(d_model=d, n_layers=layers, n_heads=heads, seq_len=128)
    counts = counting.count_params(reference, cfg)
    assert counts.n_params == layers * reference_block_count(d, heads) + d  # + final RMSNorm
    assert counts.n_embedding == 2 * VOCAB_SIZE * d  # untied embedding and unembedding
    assert counts.n_active == counts.n_params


def test_gpt2_small_block_is_7_08m_params(reference):
    # GPT-2 small (d 768, 12 heads) has 7,087,872 parameters per block with biases;
    # the reference block has no biases (-6,912: c_attn 2304, attn c_proj 768, c_fc 3072, mlp c_proj 768)
    # and adds QK-LayerNorm (+256) and swaps LayerNorms for RMSNorms (-1,536).
    cfg = ModelConfig(d_model=768, n_layers=1, n_heads=12, seq_len=1024)
    assert counting.count_params(reference, cfg).n_params - 768 == 7_087_872 - 6_912 + 256 - 1_536


def test_tied_embeddings_and_learned_positions_are_embedding_params(reference):
    tied = ModelConfig(d_model=64, n_layers=2, n_heads=1, seq_len=128, tie_embeddings=True, positions="learned")
    counts = counting.count_params(reference, tied)
    assert counts.n_embedding == VOCAB_SIZE * 64 + 128 * 64
    assert counts.n_params == 2 * reference_block_count(64, 1) + 64


MOE = '''
import jax
from proxy_models import layers as L

def init_block(key, cfg):
    k1, k2 = jax.random.split(key)
    return {"attn": L.attention_init(k1, cfg.d_model, cfg.n_heads, n_kv_heads=1, qk_norm=False),
            "moe": L.moe_init(k2, cfg.d_model, 2 * cfg.d_model, n_experts=8, top_k=2)}

def apply_block(params, x, cfg):
    x = x + L.attention(params["attn"], x)
    y, aux = L.moe(params["moe"], x)
    return x + y, aux

def hyperparameters(n_params, n_tokens):
    return {}
'''


def test_moe_counts_all_experts_in_n_and_top_k_in_active():
    program = load_program(MOE)
    d, heads = 128, 2
    cfg = ModelConfig(d_model=d, n_layers=2, n_heads=heads, seq_len=64)
    counts = counting.count_params(program, cfg)
    dh = d // heads
    attention = d * d + 2 * d * 1 * dh + d * d  # one shared key/value head (GQA)
    expert = 2 * d * 2 * d
    router = d * 8
    assert counts.n_params == 2 * (attention + router + 8 * expert) + d
    assert counts.n_active == counts.n_params - 2 * 6 * expert  # 2 of 8 experts active


def test_analytic_flops_is_kaplan_6n_plus_attention(reference):
    cfg = ModelConfig(d_model=128, n_layers=4, n_heads=2, seq_len=256)
    counts = counting.count_params(reference, cfg)
    assert counting.analytic_flops_per_token(counts, cfg) == 6 * counts.n_params + 6 * 4 * 256 * 128


def test_xla_flops_count_every_layer(reference):
    # The layer scan is unrolled for the count, so FLOPs grow with depth.
    one = counting.xla_flops_per_token(reference, ModelConfig(d_model=64, n_layers=1, n_heads=1, seq_len=64))
    three = counting.xla_flops_per_token(reference, ModelConfig(d_model=64, n_layers=3, n_heads=1, seq_len=64))
    assert one and three
    per_layer = (three - one) / 2
    cfg = ModelConfig(d_model=64, n_layers=1, n_heads=1, seq_len=64)
    block = reference_block_count(64, 1)
    assert 6 * block < per_layer < 3 * (6 * block + 12 * 64 * 64)  # matmuls plus attention and elementwise work


@pytest.mark.parametrize("n", [3e4, 1e5, 6e5, 3e6, 2e7])
def test_choose_shape_lands_within_10_percent(reference, n):
    cfg = shape.choose_shape(reference, n)
    assert abs(counting.count_params(reference, cfg).n_params / n - 1) <= 0.10
    assert cfg.d_model % 8 == 0 and cfg.d_model % cfg.n_heads == 0
    assert 10 <= cfg.d_model / cfg.n_layers <= 130  # inside Kaplan's flat aspect-ratio region


def test_choose_shape_follows_the_block(reference):
    # A block with twice the MLP gets a smaller shape for the same N.
    wide = load_program(seed_source("reference").replace("4 * cfg.d_model", "8 * cfg.d_model"))
    a, b = shape.choose_shape(reference, 1e6), shape.choose_shape(wide, 1e6)
    assert b.d_model * b.n_layers < a.d_model * a.n_layers
    assert abs(counting.count_params(wide, b).n_params / 1e6 - 1) <= 0.10


def test_choose_shape_finds_small_shapes_when_the_count_is_not_quadratic():
    # Key/value heads a quarter of the query heads (at least one): wide widths get
    # fewer key/value parameters per d^2 than narrow ones, so the quadratic fitted
    # at 128-512 misjudges d_model 32-72; the exact fallback must still land.
    gqa = load_program(seed_source("reference").replace(
        "cfg.n_heads, qk_norm=True", "cfg.n_heads, n_kv_heads=max(1, cfg.n_heads // 4), qk_norm=True"))
    for n in (3e4, 5e4):
        cfg = shape.choose_shape(gqa, n)
        assert abs(counting.count_params(gqa, cfg).n_params / n - 1) <= 0.10


def test_choose_shape_refuses_an_impossible_n(reference):
    with pytest.raises(ValueError, match="request a larger N"):
        shape.choose_shape(reference, 500)
    with pytest.raises(ValueError, match="positive"):
        shape.choose_shape(reference, float("nan"))
