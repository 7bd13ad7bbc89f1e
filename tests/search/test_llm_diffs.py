"""Answers -> programs: reasoning stripped, fences found, SEARCH/REPLACE applied tolerantly, blocks swapped."""

import pytest

from proxy_models.program import seed_source
from search import diffs, programs

BASE = seed_source("reference")
EVOLVE = ("model", "strategy")


def _diff(search: str, replace: str, prose: str = "Lower the learning rate.") -> str:
    return f"{prose}\n\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


def test_reasoning_is_stripped_in_all_its_forms():
    assert diffs.strip_reasoning("<think>hmm\nmaybe</think>\nanswer") == "answer"
    assert diffs.strip_reasoning("<THINKING>x</THINKING>a<think>y</think>b") == "ab"
    # a template that put <think> in the prompt: only the closing tag comes back
    assert diffs.strip_reasoning("long thoughts...\n</think>\nthe answer") == "the answer"
    # cut off while thinking: nothing usable
    assert diffs.strip_reasoning("<think>I will change the") == ""


def test_fenced_code_finds_every_fence_and_an_unclosed_last_one():
    text = "a\n```python\nx = 1\n```\nb\n~~~\ny = 2\n~~~\n```py\nz = 3\n"
    assert diffs.fenced_code(text) == ["x = 1\n", "y = 2\n", "z = 3\n"]


def test_an_exact_diff_applies_and_the_note_is_the_first_sentence():
    answer = _diff('        "learning_rate": 3e-3,', '        "learning_rate": 2e-3,', "Lower the peak LR. It helps.")
    applied = diffs.apply_answer(BASE, answer, EVOLVE)
    assert '"learning_rate": 2e-3,' in applied.source and '"learning_rate": 3e-3,' not in applied.source
    assert applied.form == "diff" and applied.changed == ("strategy",)
    assert applied.note == "Lower the peak LR."


def test_a_diff_with_wrong_indentation_and_trailing_spaces_still_applies_and_keeps_the_file_indentation():
    search = 'def apply_block(params, x, cfg):   \n  x = x + L.attention(params["attn"], L.rms_norm(params["norm_attn"], x), rope=True)'
    replace = 'def apply_block(params, x, cfg):\n  x = x + L.attention(params["attn"], L.rms_norm(params["norm_attn"], x), rope=False)'
    applied = diffs.apply_answer(BASE, _diff(search, replace), EVOLVE)
    assert '    x = x + L.attention(params["attn"], L.rms_norm(params["norm_attn"], x), rope=False)\n' in applied.source


def test_an_indented_snippet_is_reindented_to_where_it_matched():
    search = '"clip": 1.0,\n"z_loss": 1e-4,'  # the model dropped the indentation
    replace = '"clip": 0.5,\n"z_loss": 1e-4,'
    applied = diffs.apply_answer(BASE, _diff(search, replace), EVOLVE)
    assert '        "clip": 0.5,\n        "z_loss": 1e-4,\n' in applied.source


def test_a_diff_inside_a_fence_with_long_markers_applies():
    answer = (
        "Use a smaller warmup.\n```python\n<<<<<<<< SEARCH\n        \"warmup_fraction\": 0.05,\n========\n"
        "        \"warmup_fraction\": 0.02,\n>>>>>>>> REPLACE\n```\n"
    )
    assert '"warmup_fraction": 0.02,' in diffs.apply_answer(BASE, answer, EVOLVE).source


def test_a_diff_that_does_not_match_says_which_lines_to_copy():
    with pytest.raises(diffs.DiffError, match="does not match the best program") as e:
        diffs.apply_answer(BASE, _diff('        "learning_rate": 1e-3,', '        "learning_rate": 2e-3,'), EVOLVE)
    assert '"learning_rate": 1e-3,' in str(e.value)


def test_an_ambiguous_diff_asks_for_more_context():
    with pytest.raises(diffs.DiffError, match="matches 2 places"):
        diffs.apply_edit("a = 1\nb = 2\na = 1\n", diffs.Edit("a = 1\n", "a = 3\n"))
    with pytest.raises(diffs.DiffError, match="matches 2 places"):  # also when matched ignoring indentation
        diffs.apply_edit("if x:\n    a = 1\nif y:\n    a = 1\n", diffs.Edit("a = 1\n", "a = 3\n"))


def test_an_unfinished_search_block_is_an_error():
    with pytest.raises(diffs.DiffError, match="has no"):
        diffs.apply_answer(BASE, "<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n", EVOLVE)


def test_a_diff_that_touches_the_scaffolding_is_refused():
    answer = _diff("import math", "import math\nimport os")
    with pytest.raises(diffs.DiffError, match="outside the evolve blocks"):
        diffs.apply_answer(BASE, answer, EVOLVE)


def test_a_block_that_does_not_evolve_in_the_campaign_may_not_change():
    answer = _diff('        "learning_rate": 3e-3,', '        "learning_rate": 2e-3,')
    with pytest.raises(diffs.DiffError, match="do not evolve"):
        diffs.apply_answer(BASE, answer, ("model",))


def test_a_whole_block_replaces_the_block_of_its_name():
    block = (
        "# EVOLVE-BLOCK-START strategy\ndef hyperparameters(n_params, n_tokens):\n"
        "    return {\"learning_rate\": 1e-3 * (1e6 / n_params) ** 0.5}\n# EVOLVE-BLOCK-END"
    )
    applied = diffs.apply_answer(BASE, f"Scale the LR with width.\n\n```python\n{block}\n```\n", EVOLVE)
    assert applied.form == "blocks" and applied.changed == ("strategy",)
    assert "1e-3 * (1e6 / n_params) ** 0.5" in programs.blocks(applied.source)["strategy"]
    assert programs.blocks(applied.source)["model"] == programs.blocks(BASE)["model"]


def test_a_whole_program_in_a_fence_is_read_by_its_blocks():
    new = BASE.replace('"gelu"', '"silu"')
    applied = diffs.apply_answer(BASE, f"Use SiLU.\n```python\n{new}```", EVOLVE)
    assert applied.changed == ("model",) and '"silu"' in applied.source


def test_bare_functions_replace_their_namesakes_in_the_block_that_defines_them():
    code = "def hyperparameters(n_params, n_tokens):\n    return {\"learning_rate\": 5e-4}\n"
    applied = diffs.apply_answer(BASE, f"A flat LR.\n```python\n{code}```\n", EVOLVE)
    assert applied.form == "functions" and applied.changed == ("strategy",)
    assert programs.blocks(applied.source)["strategy"] == code


def test_answers_without_code_are_no_code_and_no_op_answers_are_unchanged():
    with pytest.raises(diffs.NoCode):
        diffs.apply_answer(BASE, "I think the program is already optimal.", EVOLVE)
    with pytest.raises(diffs.NoCode):
        diffs.apply_answer(BASE, "<think>only thoughts</think>", EVOLVE)
    with pytest.raises(diffs.Unchanged):
        diffs.apply_answer(BASE, _diff('        "clip": 1.0,', '        "clip": 1.0,  # same'), EVOLVE)


def test_reasoning_before_the_diff_is_ignored_even_when_it_holds_markers():
    thoughts = "<think>\n<<<<<<< SEARCH\nnonsense\n=======\nmore\n>>>>>>> REPLACE\n</think>\n"
    answer = thoughts + _diff('        "z_loss": 1e-4,', '        "z_loss": 1e-3,')
    assert '"z_loss": 1e-3,' in diffs.apply_answer(BASE, answer, EVOLVE).source
