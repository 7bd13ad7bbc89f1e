"""Training a proxy: determinism, one compile, loss falls with D and N, every helper, failures."""

import math

import jax
import numpy as np
import pytest

from proxy_models import shape, train
from proxy_models.config import TrainConfig
from proxy_models.program import ProgramError, load_program, seed_source

SEQ = 64


def run(program, corpus, n, d, seed=0, **kw):
    cfg = shape.choose_shape(program, n, seq_len=SEQ)
    return train.train(program, cfg, TrainConfig(n_tokens=int(d), seed=seed, eval_tokens=8192), corpus, **kw)


@pytest.fixture(scope="module")
def small(reference, corpus):
    return run(reference, corpus, 3e4, 1.2e5)


def test_result_has_the_promised_fields(small):
    assert small.status == "ok" and math.isfinite(small.val_loss)
    assert len(small.curve) >= 20
    steps, tokens, losses = zip(*small.curve)
    assert list(steps) == sorted(steps) and tokens[-1] == small.n_tokens
    assert small.n_tokens == small.steps * 16 * SEQ
    assert abs(small.n_tokens / 1.2e5 - 1) < 0.05
    assert small.tokens_per_s > 0 and small.compile_s > 0
    assert small.flops == small.flops_per_token_analytic * small.n_tokens
    assert small.flops_per_token_xla > small.flops_per_token_analytic * 0.5
    assert small.versions["jax"] == jax.__version__


def test_same_seed_same_result(reference, corpus, small):
    again = run(reference, corpus, 3e4, 1.2e5)
    assert again.curve == small.curve and again.val_loss == small.val_loss
    other = run(reference, corpus, 3e4, 1.2e5, seed=1)
    assert other.val_loss != small.val_loss


def test_loss_falls_with_more_tokens_and_a_bigger_model(reference, corpus, small):
    more_tokens = run(reference, corpus, 3e4, 3.6e5)
    bigger = run(reference, corpus, 2e5, 3.6e5)
    assert more_tokens.val_loss < small.val_loss - 0.1
    assert bigger.val_loss < more_tokens.val_loss - 0.02


def test_the_fused_step_compiles_once(reference, corpus):
    cfg = shape.choose_shape(reference, 3e4, seq_len=SEQ)
    hp = {**train.resolve_hyperparameters(reference, 3e4, 1e5)}
    key = jax.random.key(0)
    params = train.transformer.init_model(reference, cfg, key)
    tx = train.build_optimizer(reference, hp, 100)
    chunk = jax.jit(train.make_adamw_chunk(reference, cfg, hp, tx, 4))
    state = train.init_state(reference, cfg, hp, tx, params)
    data = jax.numpy.asarray(corpus.train)
    for _ in range(3):
        state, losses = chunk(state, data, key)
    assert chunk._cache_size() == 1
    assert int(state[-1]) == 12


EVERY_HELPER = '''
import functools
import math
import jax
import jax.numpy as jnp
import optax
from proxy_models import layers as L


# EVOLVE-BLOCK-START model
def model_options(cfg):
    return {"positions": "learned", "tie_embeddings": True, "final_norm": "layer"}


def init_block(key, cfg):
    k = jax.random.split(key, 4)
    return {
        "n1": L.layer_norm_init(cfg.d_model),
        "attn": L.attention_init(k[0], cfg.d_model, 4, n_kv_heads=2, qk_norm=True),
        "n2": L.rms_norm_init(cfg.d_model),
        "glu": L.swiglu_init(k[1], cfg.d_model),
        "n3": L.norm_init("rms", cfg.d_model),
        "moe": L.moe_init(k[2], cfg.d_model, cfg.d_model, n_experts=4, top_k=2),
        "pos": L.learned_positions_init(k[3], cfg.seq_len, cfg.d_model),
    }


def apply_block(params, x, cfg):
    x = L.learned_positions(params["pos"], x)
    x = x + L.attention(params["attn"], L.layer_norm(params["n1"], x), rope=True)
    x = x + L.swiglu(params["glu"], L.rms_norm(params["n2"], x))
    y, aux = L.moe(params["moe"], L.norm(params["n3"], x), "relu2")
    return x + y, aux
# EVOLVE-BLOCK-END


# EVOLVE-BLOCK-START strategy
def hyperparameters(n_params, n_tokens):
    return {"learning_rate": 2e-3 * math.sqrt(1e5 / n_params), "batch_size": 8, "schedule": "wsd"}


def make_optimizer(hp, total_steps):
    return optax.chain(optax.clip_by_global_norm(hp["clip"]), optax.adam(functools.partial(lambda s, lr: lr, lr=hp["learning_rate"])))
# EVOLVE-BLOCK-END
'''


def test_a_program_using_every_helper_trains(corpus):
    program = load_program(EVERY_HELPER)
    result = run(program, corpus, 1e5, 3e4)
    assert result.status == "ok" and result.val_loss < math.log(256)
    assert result.n_active < result.n_params  # 2 of 4 experts per token
    assert result.batch_size == 8


def test_diloco_trains_and_costs_the_same_tokens(corpus):
    source = seed_source("reference").replace('"beta2": 0.99,', '"beta2": 0.99, "optimizer": "diloco", "diloco_replicas": 4, "diloco_inner_steps": 5,')
    result = run(load_program(source), corpus, 3e4, 1.2e5)
    assert result.status == "ok" and result.val_loss < math.log(256) - 1
    assert result.n_tokens == result.steps * 16 * SEQ


def test_an_exploding_run_is_diverged_and_stops_early(corpus):
    source = seed_source("weakened").replace('"learning_rate": 1e-3', '"learning_rate": 50.0').replace('"clip": 1.0', '"clip": None')
    result = run(load_program(source), corpus, 3e4, 1.2e5)
    assert result.status == "diverged" and result.steps < 120 and math.isnan(result.val_loss)


def test_should_stop_prunes(reference, corpus):
    result = run(reference, corpus, 3e4, 1.2e5, should_stop=lambda tokens, loss: tokens >= 20_000)
    assert result.status == "pruned" and result.n_tokens < 30_000


def test_bad_inputs_say_what_is_wrong(corpus):
    nan_init = seed_source("reference").replace('"norm_mlp": L.rms_norm_init(cfg.d_model)', '"norm_mlp": L.rms_norm_init(cfg.d_model) * jnp.nan')
    with pytest.raises(ValueError, match="non-finite parameters at .*norm_mlp"):
        run(load_program(nan_init.replace("* jnp.nan", "").replace('"norm_mlp": L.rms_norm_init(cfg.d_model)', '"norm_mlp": {"scale": jnp.full((cfg.d_model,), jnp.nan)}')), corpus, 3e4, 1e4)
    with pytest.raises(ProgramError, match="unknown keys \\['lr'\\]"):
        run(load_program(seed_source("reference").replace('"learning_rate": 3e-3', '"lr": 3e-3')), corpus, 3e4, 1e4)
    with pytest.raises(ProgramError, match="does not define apply_block"):
        load_program("def init_block(key, cfg):\n    return {}\ndef hyperparameters(n, d):\n    return {}\n")
