"""The built-in mutator: every edit yields a valid program; crossover, no-ops, duplicates, seeds."""

import ast
import functools
import re

import numpy as np
import pytest

from proxy_models.config import BlockConfig
from proxy_models.program import load_program, resolve_hyperparameters, resolve_model_options, seed_source
from search import edits, model_spec, mutate, programs

try:
    from evaluator import static
except ImportError:  # pragma: no cover - the evaluator is another package's work
    static = None

HAND_WRITTEN = '''"""Written by hand, as a language model might: no spec, and a strategy built step by step."""
import jax
import jax.numpy as jnp
import math
from proxy_models import layers as L


# EVOLVE-BLOCK-START model
def init_block(key, cfg):
    keys = jax.random.split(key, 2)
    return {
        "ln1": L.rms_norm_init(cfg.d_model),
        "attn": L.attention_init(keys[0], cfg.d_model, cfg.n_heads, qk_norm=True),
        "ln2": L.rms_norm_init(cfg.d_model),
        "ff": L.mlp_init(keys[1], cfg.d_model, 3 * cfg.d_model),
    }


def apply_block(params, x, cfg):
    h = L.rms_norm(params["ln1"], x)
    x = x + L.attention(params["attn"], h)
    x = x + 0.5 * L.mlp(params["ff"], L.rms_norm(params["ln2"], x), "silu")
    return x
# EVOLVE-BLOCK-END


# EVOLVE-BLOCK-START strategy
def hyperparameters(n_params, n_tokens):
    hp = {"learning_rate": 2e-3 * math.sqrt(1e5 / n_params)}
    hp["batch_size"] = 16
    hp["schedule"] = "linear"
    return hp
# EVOLVE-BLOCK-END
'''
RICH_SPEC = {
    "placement": "sandwich", "parallel": True, "heads": 2, "kv_groups": 2, "experts": 4, "positions": "learned",
    "glu": True, "mlp_ratio": "8/3", "tie_embeddings": True, "final_norm": "layer",
}  # fmt: skip


class Parent:
    def __init__(self, program_id: int, source: str):
        self.program_id, self.source = program_id, source


def _rich() -> str:
    source = seed_source("reference")
    source = programs.replace_block(source, "model", model_spec.render(RICH_SPEC))
    hp = programs.ReturnedDict.find(programs.blocks(source)["strategy"], "hyperparameters")
    hp.set("optimizer", '"diloco"')
    hp.set("schedule", '"wsd"')
    return programs.replace_block(source, "strategy", hp.render())


BASES = {
    "reference": seed_source("reference"),
    "weakened": seed_source("weakened"),
    "rich": _rich(),
    "hand_written": HAND_WRITTEN,
}
CFG = BlockConfig(d_model=64, n_heads=2, seq_len=16, n_layers=2)


@functools.cache
def _check(source: str) -> None:
    """Static stage, contract, strategy at three scales, options, and shapes through the block."""
    import jax
    import jax.numpy as jnp

    ast.parse(source)
    if static is not None:
        report = static.check(source)
        assert report.ok, report.message
    program = load_program(source)
    for n, d in ((1e5, 5e5), (6e5, 2e6), (1e9, 2e10)):
        resolve_hyperparameters(program, n, d)
    resolve_model_options(program, CFG)
    params = jax.eval_shape(lambda k: program.init_block(k, CFG), jax.random.PRNGKey(0))
    x = jax.ShapeDtypeStruct((2, CFG.seq_len, CFG.d_model), jnp.float32)
    out = jax.eval_shape(lambda p, x: program.apply_block(p, x, CFG), params, x)
    out, aux = out if isinstance(out, tuple) else (out, None)
    assert out.shape == x.shape and (aux is None or aux.shape == ())


def test_the_static_stage_is_available():
    if static is None:
        pytest.skip("evaluator/static.py is not there yet; programs are checked without the static stage")


@pytest.mark.parametrize("name", sorted(BASES))
def test_the_base_programs_are_valid(name):
    _check(BASES[name])


def test_the_library_covers_the_issue_list():
    wanted = {
        "norm_type", "norm_placement", "qk_norm", "activation", "glu", "swiglu", "mlp_ratio", "parallel_block",
        "head_count", "grouped_query", "positions", "mixture_of_experts", "learning_rate", "lr_scaling", "warmup",
        "schedule", "beta2", "weight_decay", "z_loss", "clipping", "batch_size", "diloco", "tied_embeddings",
        "final_norm",
    }  # fmt: skip
    assert wanted <= set(edits.EDITS) and len(edits.EDITS) >= 20


@pytest.mark.parametrize("edit", sorted(edits.EDITS))
def test_every_edit_yields_a_valid_different_program(edit):
    _, fn = edits.EDITS[edit]
    applied = []
    for name, source in BASES.items():
        for seed in range(3):
            draft = edits.Draft(source)
            note = fn(draft, np.random.default_rng(seed))
            if note:
                child = draft.text()
                assert programs.source_hash(child) != programs.source_hash(source), (edit, name, note)
                _check(child)
                applied.append(name)
    assert applied, f"{edit} applied to none of the base programs"


def test_structural_edits_need_a_spec_and_the_others_work_without_one():
    draft = edits.Draft(HAND_WRITTEN)
    assert draft.spec is None
    rng = np.random.default_rng(0)
    for edit in ("norm_placement", "parallel_block", "head_count", "grouped_query", "mixture_of_experts"):
        assert edits.EDITS[edit][1](edits.Draft(HAND_WRITTEN), rng) is None
    for edit in ("norm_type", "qk_norm", "activation", "glu", "mlp_ratio", "positions", "tied_embeddings"):
        assert edits.EDITS[edit][1](edits.Draft(HAND_WRITTEN), rng), edit


def test_seeds_are_recognised_and_a_rendered_block_recovers_its_spec():
    assert edits.Draft(BASES["reference"]).spec == {}
    assert edits.Draft(BASES["weakened"]).spec["placement"] == "post"
    assert edits.Draft(BASES["rich"]).spec == model_spec.diff(RICH_SPEC)


def test_a_stale_spec_comment_is_not_trusted():
    # A language model edited the code (ReLU) but left the comment: the spec must not be used.
    source = BASES["rich"].replace('"gelu"', '"relu"')
    assert edits.Draft(source).spec is None


def test_mutation_is_deterministic_from_a_seed():
    mutator, parent = mutate.Mutator(), Parent(1, BASES["weakened"])
    run = lambda seed: [mutator.mutate(parent, np.random.default_rng(seed)) for _ in range(1)]  # noqa: E731
    assert run(3) == run(3)
    notes = {mutator.mutate(parent, np.random.default_rng(seed)).note for seed in range(10)}
    assert len(notes) > 5


def test_no_op_and_seen_programs_are_never_returned():
    mutator = mutate.Mutator(mutate.MutatorConfig(evolve=("strategy",), max_edits=1, more_edits=0.0))
    parent = Parent(1, BASES["reference"])
    seen, rng = {programs.source_hash(parent.source)}, np.random.default_rng(0)
    for _ in range(30):  # about 50 distinct single edits of the strategy exist
        child = mutator.mutate(parent, rng, seen)
        assert child is not None and child.source_hash not in seen
        assert child.source_hash == programs.source_hash(child.source)
        seen.add(child.source_hash)


def test_propose_returns_distinct_children_of_its_parents():
    parents = [Parent(1, BASES["weakened"]), Parent(2, BASES["reference"]), Parent(3, BASES["rich"])]
    children = mutate.Mutator(mutate.MutatorConfig(crossover_rate=0.5)).propose(parents, np.random.default_rng(0), n=12)
    assert len(children) == 12 and len({c.source_hash for c in children}) == 12
    assert any(len(c.parent_ids) == 2 for c in children) and all(set(c.parent_ids) <= {1, 2, 3} for c in children)
    for child in children:
        _check(child.source)


def test_crossover_keeps_each_parents_contract():
    a, b = Parent(1, BASES["rich"]), Parent(2, BASES["weakened"])
    child = mutate.Mutator().crossover(a, b, np.random.default_rng(0))
    assert child.parent_ids == (1, 2)
    blocks, blocks_a, blocks_b = (programs.blocks(p) for p in (child.source, a.source, b.source))
    assert blocks["model"] == blocks_a["model"] and blocks["strategy"] == blocks_b["strategy"]
    _check(child.source)
    program = load_program(child.source)
    assert resolve_hyperparameters(program, 1e5, 5e5) == resolve_hyperparameters(load_program(b.source), 1e5, 5e5)


def test_spec_crossover_mixes_the_fields_of_both_parents():
    mutator = mutate.Mutator(mutate.MutatorConfig(evolve=("model",)))
    a, b = Parent(1, BASES["rich"]), Parent(2, BASES["weakened"])
    child = mutator.crossover(a, b, np.random.default_rng(0))
    spec = model_spec.full(edits.Draft(child.source).spec)
    fa, fb = model_spec.full(model_spec.diff(RICH_SPEC)), model_spec.full(edits.Draft(b.source).spec)
    assert all(spec[k] in (fa[k], fb[k]) for k in spec)
    assert spec != fa and spec != fb
    assert programs.blocks(child.source)["strategy"] == programs.blocks(a.source)["strategy"]
    _check(child.source)


def test_a_strategy_only_campaign_never_touches_the_model_block():
    mutator = mutate.Mutator(mutate.MutatorConfig(evolve=("strategy",)))
    parents = [Parent(1, BASES["weakened"]), Parent(2, BASES["reference"])]
    for child in mutator.propose(parents, np.random.default_rng(1), n=10):
        model = programs.blocks(child.source)["model"]
        assert model in (programs.blocks(p.source)["model"] for p in parents)


def test_a_strategy_that_is_not_a_dict_display_is_wrapped_once():
    draft = edits.Draft(HAND_WRITTEN)
    assert edits.EDITS["z_loss"][1](draft, np.random.default_rng(0))
    strategy = draft.blocks["strategy"]
    assert "def _hyperparameters_base(n_params, n_tokens):" in strategy
    assert "**_hyperparameters_base(n_params, n_tokens)" in strategy
    _check(draft.text())
    again = edits.Draft(draft.text())  # now a dict display: edited in place, not wrapped again
    edits.EDITS["learning_rate"][1](again, np.random.default_rng(0))
    assert again.blocks["strategy"].count("def ") == 2


def test_a_long_random_walk_stays_valid():
    mutator, rng = mutate.Mutator(), np.random.default_rng(7)
    source, seen = BASES["weakened"], set()
    for step in range(40):
        child = mutator.mutate(Parent(step, source), rng, seen)
        assert child is not None
        _check(child.source)
        seen.add(child.source_hash)
        source = child.source


def _first_edits(config: mutate.MutatorConfig, n: int = 300) -> list[str]:
    mutator, parent = mutate.Mutator(config), Parent(1, BASES["weakened"])
    rng = np.random.default_rng(0)
    return [mutator.mutate(parent, rng).note.split(":")[0] for _ in range(n)]


def test_edit_weights_set_how_often_an_edit_is_tried():
    single = dict(max_edits=1, more_edits=0.0)
    plain = _first_edits(mutate.MutatorConfig(edit_weights=(), **single))
    heavy = _first_edits(mutate.MutatorConfig(edit_weights=(("learning_rate", 8.0),), **single))
    never = _first_edits(mutate.MutatorConfig(edit_weights=(("learning_rate", 0.0),), **single))
    assert "learning_rate" not in never
    # Weight 8 among ~30 edits of weight 1 (some no-ops here): several times as often as weight 1.
    assert heavy.count("learning_rate") >= 3 * max(1, plain.count("learning_rate"))
    assert heavy.count("learning_rate") > 0.15 * len(heavy)


def test_the_default_weights_favour_the_learning_rate_over_a_typical_edit():
    edits = _first_edits(mutate.MutatorConfig(max_edits=1, more_edits=0.0), n=400)
    assert edits.count("learning_rate") > 2 * edits.count("norm_type")


@pytest.mark.parametrize("weights, message", [
    ((("learning_rat", 2.0),), "unknown mutator edit(s) ['learning_rat']"),
    ((("learning_rate", -1.0),), "finite numbers >= 0"),
    ((("learning_rate", float("nan")),), "finite numbers >= 0"),
])
def test_bad_edit_weights_are_refused_with_the_reason(weights, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        mutate.Mutator(mutate.MutatorConfig(edit_weights=weights))


def test_all_zero_weights_are_refused():
    zero = tuple((name, 0.0) for name in edits.EDITS)
    with pytest.raises(ValueError, match="weight 0"):
        mutate.Mutator(mutate.MutatorConfig(edit_weights=zero))


def test_the_proposer_table_configures_the_mutator():
    from search.propose import mutator_config

    config = mutator_config({"kind": "mutator", "crossover_rate": 0.5, "mutator": {"edit_weights": {"moe_experts": 0}}})
    weights = dict(config.edit_weights)
    assert config.crossover_rate == 0.5 and weights["moe_experts"] == 0
    assert weights["learning_rate"] == dict(mutate.DEFAULT_EDIT_WEIGHTS)["learning_rate"]  # defaults kept
    assert mutator_config({}) == mutate.MutatorConfig()
    for bad, message in (({"mutator": {"crossover": 1}}, "unknown key(s) ['crossover']"),
                         ({"max_edits": "3"}, "max_edits must be an integer"),
                         ({"edit_weights": [1, 2]}, "must be a table"),
                         ({"edit_weights": {"nope": 1}}, "unknown mutator edit(s) ['nope']")):
        with pytest.raises(ValueError, match=re.escape(message)):
            mutator_config(bad)


def test_a_bad_proposer_table_stops_the_run_before_the_database_exists(tmp_path, capsys):
    from search.cli import main
    from search.demo import write_demo

    spec = write_demo(tmp_path / "c", candidates=2, simulate=True)
    spec.write_text(spec.read_text().replace('kind = "mutator"', 'edit_weights = {lr = 3}\nkind = "mutator"'))
    assert main(["run", str(spec)]) == 2
    assert "unknown mutator edit(s) ['lr']" in capsys.readouterr().err
    assert not (tmp_path / "c" / "campaign.sqlite").exists()
    spec.write_text(spec.read_text().replace("edit_weights = {lr = 3}", "temprature = 0.7"))  # a typo
    assert main(["run", str(spec)]) == 2
    assert "unknown key(s) ['temprature']" in capsys.readouterr().err
    assert not (tmp_path / "c" / "campaign.sqlite").exists()


@pytest.mark.parametrize("edit", ["wsd_decay", "final_lr", "diloco_settings"])
def test_edits_of_a_setting_nothing_reads_are_not_made(edit):
    _, fn = edits.EDITS[edit]
    source = BASES["weakened"]  # constant schedule, AdamW: none of these settings is read
    assert all(fn(edits.Draft(source), np.random.default_rng(seed)) is None for seed in range(10))
