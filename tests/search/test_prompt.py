"""Prompt building: parents worst first and best last, with scores, laws, failures and the task."""

import pytest

from db.rows import Failure, Fit, Status
from proxy_models.program import DEFAULT_HYPERPARAMETERS, seed_source
from search import programs, prompt

LAW = {"E": 1.1, "A": 350.0, "alpha": 0.31, "B": 410.0, "beta": 0.28}


def _parents():
    fit = Fit(program_id=3, params=LAW, loss_at_c_star=1.71, loss_low=1.69, loss_high=1.74, n_runs=4)
    best = prompt.Parent(3, seed_source("reference"), score=1.71, stage=3, fit=fit, note="qk_norm: False -> True")
    worse = prompt.Parent(1, seed_source("weakened"), score=1.9, stage=2)
    return [best, worse]  # deliberately out of order


def test_parents_are_shown_worst_first_and_best_last_with_their_numbers():
    text = prompt.build_prompt(_parents(), target_flops=1e18)
    first, second = text.index("### Program 1 (id 1)"), text.index("### Program 2 (id 3)")
    assert first < second
    assert "predicted loss at C*: 1.7100 [1.6900, 1.7400]" in text
    assert "score 1.9000 (its base-run loss moved to the C* scale; no fit yet)" in text
    assert "L(N, D) = 1.1 + 350 / N^0.31 + 410 / D^0.28 (from 4 runs)" in text
    assert "Changed from its parent: qk_norm: False -> True" in text
    assert "C* = 1e18 FLOPs" in text


def test_the_best_program_is_shown_whole_and_the_others_by_their_blocks():
    text = prompt.build_prompt(_parents())
    assert text.count("from proxy_models import layers as L\n") == 1  # the scaffold, once: the best's
    assert programs.blocks(seed_source("weakened"))["strategy"] in text
    assert seed_source("reference").rstrip("\n") in text


def test_the_contract_allowed_imports_helpers_and_defaults_are_stated():
    text = prompt.build_prompt(_parents())
    for needle in ("init_block(key, cfg)", "apply_block(params, x, cfg)", "hyperparameters(n_params, n_tokens)"):
        assert needle in text
    assert "Allowed imports:" in text and "optax" in text and "from proxy_models import layers as L" in text
    assert "- L.attention_init(key: Array, d_model: int, n_heads: int" in text
    assert all(f"  {key}: " in text for key in DEFAULT_HYPERPARAMETERS)


def test_failures_are_listed_with_short_messages():
    failures = [
        Failure(7, 1, Status.ERROR, "ValueError: shapes do not match\n" * 100),
        Failure(8, 0, Status.INVALID, "line 3: import os is not allowed"),
    ]
    text = prompt.build_prompt(_parents(), failures, max_message_chars=120)
    assert "- program 8 (static check, invalid): line 3: import os is not allowed" in text
    line = next(line for line in text.splitlines() if line.startswith("- program 7"))
    assert line.startswith("- program 7 (smoke test, error): ValueError") and len(line) < 200


def test_the_task_asks_for_the_evolvable_blocks_only_in_a_parseable_form():
    text = prompt.build_prompt(_parents(), evolve=("strategy",))
    assert "the evolve block(s) `strategy`" in text
    assert f"{prompt.SEARCH}\n" in text and f"\n{prompt.DIVIDER}\n" in text and f"\n{prompt.REPLACE}\n" in text
    shown = text[text.index("### Program 1") : text.index("### Program 2")]
    assert "EVOLVE-BLOCK-START strategy" in shown and "EVOLVE-BLOCK-START model" not in shown


def test_the_prompt_is_a_pure_function_of_its_arguments():
    assert prompt.build_prompt(_parents()) == prompt.build_prompt(list(reversed(_parents())))
    with pytest.raises(ValueError, match="at least one parent"):
        prompt.build_prompt([])
