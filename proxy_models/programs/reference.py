"""Reference recipe (DESIGN.md): pre-RMSNorm decoder block with QK-LayerNorm,
rotary positions and a GELU MLP; AdamW (0.9, 0.99), warmup then cosine to 5%,
decoupled weight decay 1/T, clipping at 1.0, z-loss 1e-4."""
import jax
import jax.numpy as jnp
import math
from proxy_models import layers as L


# EVOLVE-BLOCK-START model
def init_block(key, cfg):
    k_attn, k_mlp = jax.random.split(key)
    # Residual branches scaled down with depth so that the stream's variance stays O(1).
    out_scale = 1.0 / math.sqrt(2 * cfg.n_layers)
    return {
        "norm_attn": L.rms_norm_init(cfg.d_model),
        "attn": L.attention_init(k_attn, cfg.d_model, cfg.n_heads, qk_norm=True, out_scale=out_scale),
        "norm_mlp": L.rms_norm_init(cfg.d_model),
        "mlp": L.mlp_init(k_mlp, cfg.d_model, 4 * cfg.d_model, out_scale=out_scale),
    }


def apply_block(params, x, cfg):
    x = x + L.attention(params["attn"], L.rms_norm(params["norm_attn"], x), rope=True)
    x = x + L.mlp(params["mlp"], L.rms_norm(params["norm_mlp"], x), "gelu")
    return x
# EVOLVE-BLOCK-END


# EVOLVE-BLOCK-START strategy
def hyperparameters(n_params, n_tokens):
    return {
        "learning_rate": 3e-3,
        "batch_size": 16,
        "warmup_fraction": 0.05,
        "schedule": "cosine",
        "final_lr_fraction": 0.05,
        "weight_decay": None,  # None: 1/T, T the total number of steps
        "clip": 1.0,
        "z_loss": 1e-4,
        "beta1": 0.9,
        "beta2": 0.99,
    }
# EVOLVE-BLOCK-END
