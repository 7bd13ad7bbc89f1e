"""The reference recipe's optimizer, value by value."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from proxy_models import optim
from proxy_models.program import DEFAULT_HYPERPARAMETERS

HP = {**DEFAULT_HYPERPARAMETERS, "learning_rate": 1e-2, "warmup_fraction": 0.1}


def test_cosine_schedule_peaks_at_warmup_end_and_ends_at_5_percent():
    sched = optim.schedule(HP, 1000)
    assert float(sched(0)) == 0.0
    assert float(sched(100)) == pytest.approx(1e-2, rel=1e-6)  # warmup is 10% of 1000 steps
    assert float(sched(50)) == pytest.approx(0.5e-2, rel=1e-6)  # linear warmup
    assert float(sched(1000)) == pytest.approx(0.05 * 1e-2, rel=1e-5)
    assert float(sched(550)) == pytest.approx(1e-2 * (0.05 + 0.95 * 0.5), rel=1e-5)  # cosine midpoint


@pytest.mark.parametrize("kind", ["linear", "wsd", "constant"])
def test_other_schedule_shapes(kind):
    sched = optim.schedule({**HP, "schedule": kind, "decay_fraction": 0.2}, 1000)
    assert float(sched(100)) == pytest.approx(1e-2, rel=1e-6)
    final = float(sched(1000))
    if kind == "constant":
        assert final == pytest.approx(1e-2)
    else:
        assert final == pytest.approx(0.05e-2, rel=1e-5)
    if kind == "wsd":
        assert float(sched(799)) == pytest.approx(1e-2)  # stable until the last 20%


def test_weight_decay_shrinks_matrices_by_one_over_t_at_peak():
    total = 400
    tx = optim.reference_optimizer({**HP, "warmup_fraction": 0.0, "clip": None}, total)
    params = {"w": jnp.ones((4, 4)), "gain": jnp.ones((4,))}
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, state, params)  # step 0 is at the peak learning rate
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["w"], 1 - 1 / total, rtol=1e-6)
    np.testing.assert_allclose(new["gain"], 1.0)  # gains are not decayed
    assert optim.weight_decay_per_step({**HP, "weight_decay": None}, total) == 1 / total


def test_clipping_bounds_the_global_gradient_norm():
    tx = optim.reference_optimizer({**HP, "clip": 1.0}, 100)
    clip = tx.init({"w": jnp.zeros(3)})[0]  # the chain starts with the clip
    assert isinstance(clip, optax.EmptyState)
    grads = {"w": jnp.array([30.0, 40.0, 0.0])}
    clipped, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    assert float(optax.global_norm(clipped)) == pytest.approx(1.0)


def test_adam_betas_are_the_recipes():
    assert (DEFAULT_HYPERPARAMETERS["beta1"], DEFAULT_HYPERPARAMETERS["beta2"]) == (0.9, 0.99)
    assert DEFAULT_HYPERPARAMETERS["clip"] == 1.0 and DEFAULT_HYPERPARAMETERS["final_lr_fraction"] == 0.05


@pytest.mark.parametrize("kind", ["cosine", "linear", "wsd", "constant"])
@pytest.mark.parametrize("key, other", [("final_lr_fraction", 0.2), ("decay_fraction", 0.5)])
def test_a_setting_is_read_exactly_when_the_schedule_depends_on_it(kind, key, other):
    from proxy_models.program import is_read

    hp = {**HP, "schedule": kind}
    steps = np.arange(0, 1001, 7)
    before = np.array([float(optim.schedule(hp, 1000)(s)) for s in steps])
    after = np.array([float(optim.schedule({**hp, key: other}, 1000)(s)) for s in steps])
    assert is_read(key, hp) == (not np.allclose(before, after, rtol=0, atol=0))


def test_effective_hyperparameters_drop_what_nothing_reads():
    from proxy_models.program import effective_hyperparameters

    constant = effective_hyperparameters({**DEFAULT_HYPERPARAMETERS, "schedule": "constant"})
    assert "final_lr_fraction" not in constant and "decay_fraction" not in constant
    assert "diloco_replicas" not in constant and constant["learning_rate"] == DEFAULT_HYPERPARAMETERS["learning_rate"]
    wsd = effective_hyperparameters({**DEFAULT_HYPERPARAMETERS, "schedule": "wsd", "optimizer": "diloco"})
    assert {"final_lr_fraction", "decay_fraction", "diloco_replicas", "diloco_outer_lr"} <= set(wsd)


def test_programs_that_differ_only_in_an_unread_setting_share_a_fingerprint():
    from proxy_models.program import seed_source
    from proxy_models.run import smoke

    weak = seed_source("weakened")  # constant schedule: decay_fraction is never read
    assert '"schedule": "constant"' in weak
    with_decay = lambda v: weak.replace('"clip": 1.0,', f'"clip": 1.0, "decay_fraction": {v},')  # noqa: E731
    assert smoke(with_decay(0.1))["fingerprint"] == smoke(with_decay(0.3))["fingerprint"]
    wsd = lambda v: with_decay(v).replace('"schedule": "constant"', '"schedule": "wsd"')  # noqa: E731
    assert smoke(wsd(0.1))["fingerprint"] != smoke(wsd(0.3))["fingerprint"]
