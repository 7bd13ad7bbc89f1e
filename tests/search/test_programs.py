"""Evolve blocks, normal forms and editable dicts in program source."""

import pytest

from proxy_models.program import seed_source
from search import programs

SOURCE = """import math

# EVOLVE-BLOCK-START model
def f(x):
    return x
# EVOLVE-BLOCK-END

# EVOLVE-BLOCK-START strategy
def hyperparameters(n_params, n_tokens):
    return {"learning_rate": 1e-3, **base(), "clip": 1.0}  # one line
# EVOLVE-BLOCK-END
"""


def test_blocks_are_read_and_replaced_without_touching_the_rest():
    blocks = programs.blocks(SOURCE)
    assert list(blocks) == ["model", "strategy"] and blocks["model"] == "def f(x):\n    return x\n"
    assert programs.replace_block(SOURCE, "model", blocks["model"]) == SOURCE
    new = programs.replace_block(SOURCE, "model", "def f(x):\n    return 2 * x\n")
    assert programs.blocks(new)["model"] == "def f(x):\n    return 2 * x\n"
    assert programs.blocks(new)["strategy"] == blocks["strategy"]
    assert programs.scaffold(SOURCE).count("EVOLVE-BLOCK") == 4 and "def f" not in programs.scaffold(SOURCE)


@pytest.mark.parametrize(
    "broken, message",
    [
        ("# EVOLVE-BLOCK-START a\n", "never closed"),
        ("# EVOLVE-BLOCK-END\n", "without a block start"),
        ("# EVOLVE-BLOCK-START a\n# EVOLVE-BLOCK-START b\n", "inside block"),
        ("# EVOLVE-BLOCK-START a\n# EVOLVE-BLOCK-END\n# EVOLVE-BLOCK-START a\n# EVOLVE-BLOCK-END\n", "second block"),
    ],
)
def test_broken_markers_are_named(broken, message):
    with pytest.raises(programs.BlockError, match=message):
        programs.blocks(broken)
    with pytest.raises(programs.BlockError, match="no evolve block"):
        programs.replace_block(SOURCE, "optimizer", "")


def test_the_hash_ignores_comments_and_layout_but_not_code():
    reformatted = SOURCE.replace("return x", "return (x)  # same").replace("import math", "import math\n\n")
    assert programs.source_hash(reformatted) == programs.source_hash(SOURCE)
    assert programs.source_hash(SOURCE.replace("1e-3", "2e-3")) != programs.source_hash(SOURCE)
    assert programs.evolved_length(SOURCE) < len(SOURCE)


def test_a_returned_dict_is_edited_entry_by_entry():
    text = programs.blocks(seed_source("reference"))["strategy"]
    d = programs.ReturnedDict.find(text, "hyperparameters")
    assert d.args == ["n_params", "n_tokens"] and d.get("schedule") == '"cosine"' and not d.spreads
    d.set("schedule", '"wsd"')
    d.set("optimizer", '"diloco"')
    d.delete("clip")
    out = d.render()
    assert '"schedule": "wsd",' in out and '"optimizer": "diloco",' in out and '"clip"' not in out
    assert '"weight_decay": None,  # None: 1/T, T the total number of steps' in out  # comments survive


def test_a_key_before_a_spread_moves_after_it_so_that_it_takes_effect():
    d = programs.ReturnedDict.find(programs.blocks(SOURCE)["strategy"], "hyperparameters")
    assert d.spreads == ["base()"] and d.keys() == ["learning_rate", "clip"]
    d.set("learning_rate", "2e-3")
    d.set("clip", "0.5")
    assert [(e.key, e.expr) for e in d.entries] == [(None, "base()"), ("clip", "0.5"), ("learning_rate", "2e-3")]
    assert programs.ReturnedDict.find(d.render(), "hyperparameters").get("learning_rate") == "2e-3"


def test_a_function_without_a_dict_display_is_wrapped_and_a_missing_one_added():
    text = "def hyperparameters(n_params, n_tokens):\n    hp = {}\n    hp['clip'] = 2.0\n    return hp\n"
    d = programs.returned_dict(text, "hyperparameters", "n_params, n_tokens")
    assert d.spreads == ["_hyperparameters_base(n_params, n_tokens)"]
    assert "def _hyperparameters_base(n_params, n_tokens):" in d.render()
    added = programs.returned_dict("x = 1\n", "model_options", "cfg")
    assert added.entries == [] and "def model_options(cfg):" in added.render()
