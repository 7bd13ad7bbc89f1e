"""A deliberately weakened seed: post-LayerNorm, ReLU, constant learning rate,
no z-loss. Searches start here to show that they find their way back."""
import jax
import jax.numpy as jnp
import math
from proxy_models import layers as L


# EVOLVE-BLOCK-START model
def init_block(key, cfg):
    k_attn, k_mlp = jax.random.split(key)
    return {
        "attn": L.attention_init(k_attn, cfg.d_model, cfg.n_heads, qk_norm=False),
        "norm_attn": L.layer_norm_init(cfg.d_model),
        "mlp": L.mlp_init(k_mlp, cfg.d_model, 4 * cfg.d_model),
        "norm_mlp": L.layer_norm_init(cfg.d_model),
    }


def apply_block(params, x, cfg):
    x = L.layer_norm(params["norm_attn"], x + L.attention(params["attn"], x, rope=True))
    x = L.layer_norm(params["norm_mlp"], x + L.mlp(params["mlp"], x, "relu"))
    return x
# EVOLVE-BLOCK-END


# EVOLVE-BLOCK-START strategy
def hyperparameters(n_params, n_tokens):
    return {
        "learning_rate": 1e-3,
        "batch_size": 16,
        "warmup_fraction": 0.0,
        "schedule": "constant",
        "weight_decay": 0.0,
        "clip": 1.0,
        "z_loss": 0.0,
        "beta1": 0.9,
        "beta2": 0.99,
    }
# EVOLVE-BLOCK-END
