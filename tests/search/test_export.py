"""scalesearch export: the files, the numbers in config.json, and a model.py that trains exactly as the proxy."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # for recorded_campaign (tests/ is not a package)

from recorded_campaign import BEST, SOURCES, TARGET_FLOPS, campaign_path  # noqa: E402
from search import export, scopes, standalone  # noqa: E402
from search.cli import main  # noqa: E402

INFERENCE_TOKENS = 1e9
TOLERANCE = 1e-5
REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("export")
    argv = ["export", str(campaign_path()), str(BEST), "--target-flops", str(TARGET_FLOPS),
            "--inference-tokens", str(INFERENCE_TOKENS), "--out", str(out)]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def config(exported) -> dict:
    return json.loads((exported / "config.json").read_text())


def test_the_export_holds_the_program_a_standalone_model_config_and_readme(exported):
    assert sorted(p.name for p in exported.iterdir()) == sorted(export.FILES)
    assert (exported / "program.py").read_text() == SOURCES[BEST]
    tree = ast.parse((exported / "model.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported.isdisjoint(standalone.FORBIDDEN_IMPORTS) and {"jax", "optax"} <= imported


def test_config_gives_both_allocations_with_intervals_and_recommends_the_inference_aware_one(config):
    assert config["recommended"] == "inference_aware" and config["target"]["flops"] == TARGET_FLOPS
    optimal, aware = config["allocations"]["compute_optimal"], config["allocations"]["inference_aware"]
    for a in (optimal, aware):
        assert a["loss_interval"][0] < a["predicted_loss"] < a["loss_interval"][1]
        assert a["n_params_interval"][0] < a["n_params"] < a["n_params_interval"][1]
        assert a["n_tokens_interval"][0] < a["n_tokens"] < a["n_tokens_interval"][1]
        assert a["training_flops"] + a["inference_flops"] == pytest.approx(TARGET_FLOPS, rel=1e-3)
        arch = a["architecture"]
        assert abs(arch["n_params"] / a["n_params"] - 1) <= 0.1  # the shape rule's tolerance
        assert a["training"]["hyperparameters"]["learning_rate"] == 2e-3  # program 5's strategy
        assert a["training"]["hyperparameters"]["z_loss"] == 2e-4
    # Serving a billion tokens makes a smaller model trained on more data the better use of C.
    assert aware["n_params"] < optimal["n_params"] and aware["tokens_per_parameter"] > optimal["tokens_per_parameter"]
    assert aware["predicted_loss"] > optimal["predicted_loss"] and aware["inference_flops"] > 0


def test_config_holds_the_fitted_law_and_agrees_with_the_campaign_ranking(config):
    law = config["law"]
    assert set(law["params"]) == {"E", "A", "B", "alpha", "beta"} and law["n_runs"] == 4
    for name, value in law["params"].items():
        low, high = law["intervals"][name]
        assert 0 <= low < value < high if name in ("E", "A", "B") else low < value < high
    ranking = config["campaign_ranking"]
    assert ranking["rank"] == 1 and ranking["loss_at_c_star"] == pytest.approx(
        config["allocations"]["compute_optimal"]["predicted_loss"], rel=1e-6)  # the same fit, refitted
    # The same fit's posterior: P(best) and the expected regret agree with the campaign's to Monte Carlo error.
    optimal = config["allocations"]["compute_optimal"]
    assert optimal["prob_best"] == pytest.approx(ranking["prob_best"], abs=0.03)
    assert optimal["expected_regret"] == pytest.approx(ranking["expected_regret"], rel=0.1)
    rep = config["reproduce"]
    assert rep["val_loss"] > 0 and rep["cores"] == export.WORKER_CORES  # the recorded runs say nothing else
    assert rep["command"].startswith("taskset -c 0 python model.py --n-params")


def test_the_readme_says_how_the_numbers_were_obtained_and_how_sure_they_are(exported, config):
    text = (exported / "README.md").read_text()
    aware = config["allocations"]["inference_aware"]
    for needle in ("How the numbers were obtained", "How sure", "maximum likelihood", "inference-aware",
                   f"{aware['predicted_loss']:.4f}", config["reproduce"]["command"],
                   f"(expected regret): {100.0 * aware['expected_regret']:.2f}%"):
        assert needle in text


def _corpus(folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir()
    for name in ("textwrap.py", "colorsys.py", "bisect.py", "heapq.py"):
        shutil.copy(pathlib.Path(sysconfig.get_paths()["stdlib"]) / name, folder / name)
    return folder


def test_model_py_in_a_process_that_cannot_import_scalesearch_trains_exactly_as_the_proxy(exported, tmp_path,
                                                                                         monkeypatch):
    from proxy_models import data, shape, train
    from proxy_models.config import TrainConfig
    from proxy_models.program import load_program

    cache, corpus = tmp_path / "cache", _corpus(tmp_path / "corpus")
    monkeypatch.setenv("SCALESEARCH_CACHE", str(cache))
    text = data.load_corpus(corpus)  # build the cache once, before both trainings read it
    tcfg = TrainConfig(n_tokens=4096, seed=7, eval_tokens=1024, curve_points=2, steps_per_call=4)
    args = ["--d-model", "32", "--n-layers", "1", "--seq-len", "32", "--n-tokens", "4096", "--seed", "7",
            "--eval-tokens", "1024", "--curve-points", "2", "--steps-per-call", "4", "--corpus", str(corpus),
            "--out", str(tmp_path / "result.json")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {"SCALESEARCH_CACHE": str(cache)}
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    model = shutil.copy(exported / "model.py", workdir / "model.py")
    proc = subprocess.Popen(export.isolated_command(model, args), cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    program = load_program(SOURCES[BEST])  # the proxy, meanwhile, in this process
    expected = train.train(program, shape.model_config(program, 32, 1, 32), tcfg, text)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    got = json.loads((tmp_path / "result.json").read_text())
    assert expected.status == got["status"] == "ok" and got["steps"] == expected.steps == 8
    assert got["n_params"] == expected.n_params and got["hyperparameters"] == expected.hyperparameters
    assert [c[2] for c in got["curve"]] == pytest.approx([c[2] for c in expected.curve], abs=TOLERANCE)
    assert abs(got["val_loss"] - expected.val_loss) <= TOLERANCE
    assert str(REPO) not in out + err


def test_the_isolated_runner_really_refuses_this_project(tmp_path):
    script = tmp_path / "cheat.py"
    script.write_text("import proxy_models.layers\n")
    proc = subprocess.run(export.isolated_command(script, []), cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "must not import proxy_models" in proc.stderr
    script.write_text("import os\nprint(len(os.sched_getaffinity(0)))\n")
    proc = subprocess.run(export.isolated_command(script, [], cores=1), cwd=tmp_path, capture_output=True, text=True)
    assert proc.stdout.strip() == "1"  # as the evaluator's worker: XLA's CPU results depend on the cores


# ----------------------------------------------------------------------------- names a program shares with the proxy

CLASHING = '''"""A program whose helpers are named like the proxy's own functions."""
import jax
import optax
from proxy_models import layers as L

# EVOLVE-BLOCK-START model
HEAD_DIM = 16  # shape.py has a HEAD_DIM too (64)


def attention(p, x):  # layers.attention
    return 0.5 * L.attention(p, x, rope=True)


def mlp(p, x):  # layers.mlp, which layers.moe calls
    return L.mlp(p, x, "silu")


def init_block(key, cfg):
    k1, k2 = jax.random.split(key)
    return {"n1": L.rms_norm_init(cfg.d_model), "attn": L.attention_init(k1, cfg.d_model, cfg.n_heads),
            "n2": L.rms_norm_init(cfg.d_model), "mlp": L.mlp_init(k2, cfg.d_model, 2 * cfg.d_model)}


def apply_block(params, x, cfg):
    x = x + attention(params["attn"], L.rms_norm(params["n1"], x))
    return x + mlp(params["mlp"], L.rms_norm(params["n2"], x))
# EVOLVE-BLOCK-END


# EVOLVE-BLOCK-START strategy
def hyperparameters(n_params, n_tokens):
    return {"learning_rate": 1e-3, "batch_size": 8}


def schedule(peak, total_steps):  # optim.schedule
    return optax.warmup_cosine_decay_schedule(0.0, peak, max(1, total_steps // 10), total_steps)


def make_optimizer(hp, total_steps):
    return optax.adamw(schedule(hp["learning_rate"], total_steps), weight_decay=0.0)
# EVOLVE-BLOCK-END
'''


def _load_module(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location("exported_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_a_program_may_name_helpers_like_the_proxy_does_and_still_computes_the_same(tmp_path):
    import jax
    import jax.numpy as jnp

    from proxy_models import optim, shape, transformer
    from proxy_models.program import load_program
    from proxy_models.train import AUX_LOSS_WEIGHT, build_optimizer, init_params

    path = tmp_path / "model.py"
    path.write_text(standalone.model_py(CLASHING, "clashing", "test"))
    m = _load_module(path)
    assert m.attention is not m.layers.attention and m.HEAD_DIM == 16 and m.heads_for(128) == shape.heads_for(128)
    assert m.schedule is not m.schedule_ and m.mlp is not m.layers.mlp

    assert "mlp_(e, x, activation_name)" in inspect.getsource(m.moe)  # moe keeps calling the proxy's mlp

    program = load_program(CLASHING)
    key = jax.random.key(3)
    cfg, mine = shape.model_config(program, 64, 1, 8), m.model_config(m.PROGRAM, 64, 1, 8)
    params = init_params(program, cfg, key)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, params, m.init_params(m.PROGRAM, mine, key)))
    batch = jax.random.randint(key, (2, 9), 0, 256)
    want = jax.jit(lambda p: transformer.loss_fn(program, cfg, p, batch, 1e-4, AUX_LOSS_WEIGHT)[0])(params)
    got = jax.jit(lambda p: m.loss_fn(m.PROGRAM, mine, p, batch, 1e-4, AUX_LOSS_WEIGHT)[0])(params)
    assert float(got) == pytest.approx(float(want), abs=1e-6)
    hp = {"learning_rate": 1e-3}
    step = lambda tx: jax.jit(lambda p: tx.update(p, tx.init(p), p)[0])(params)  # noqa: E731
    updates, my_updates = step(build_optimizer(program, hp, 10)), step(m.build_optimizer(m.PROGRAM, hp, 10))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.allclose(a, b, atol=1e-7)), updates, my_updates))
    full = {**m.DEFAULT_HYPERPARAMETERS, **hp}
    assert float(m.schedule_(full, 10)(5)) == pytest.approx(float(optim.schedule(full, 10)(5)))


def test_renaming_respects_python_scopes():
    code = '''schedule = 1


def f(schedule, y=schedule):
    return schedule + y


def g(x):
    return schedule + x + h(schedule=x)


def h(**kw):
    return [schedule for schedule in range(3)] + [schedule]


class C:
    schedule = 2

    def m(self):
        return schedule

    k = schedule


lam = lambda schedule: schedule
obj.schedule = schedule
'''
    want = code.replace("schedule = 1", "schedule_ = 1").replace("y=schedule)", "y=schedule_)")
    want = want.replace("return schedule + x", "return schedule_ + x").replace("+ [schedule]", "+ [schedule_]")
    want = want.replace("        return schedule\n", "        return schedule_\n").replace("obj.schedule = schedule\n",
                                                                                  "obj.schedule = schedule_\n")
    assert scopes.rename_globals(code, {"schedule": "schedule_"}) == want


def test_exporting_a_failed_program_or_a_bad_budget_is_refused(tmp_path, capsys):
    for argv, message in ((["6"], "ended with status invalid"), (["5", "--target-flops", "-1"], "positive"),
                          (["5", "--target-flops", "0"], "positive"),  # not the campaign's C* in disguise
                          (["99"], "no program 99")):
        assert main(["export", str(campaign_path()), *argv, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert main(["export", str(campaign_path()), "5", "--out", str(tmp_path / "a-file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
