"""The demo campaign's spec: written from the template, loadable, and what the README says it is."""

from search.config import load_spec
from search.demo import write_demo


def test_demo_spec_is_a_weakened_seed_with_the_reference_as_yardstick(tmp_path):
    spec = load_spec(write_demo(tmp_path / "demo", candidates=5))
    assert spec.budget.candidates == 5
    assert [spec.resolve(p).name for p in spec.compare] == ["reference.py"]
    assert "constant" in spec.resolve(spec.seed_program).read_text()  # the weakened seed
    p = spec.proxies
    assert p.n_min < p.base_n < p.n_max and p.d_min < p.base_d < p.d_max
    assert spec.target_flops > 100 * max(6 * n * d for n, d in p.pool())  # C* lies well beyond the box


def test_demo_rewrites_its_folder(tmp_path):
    root = tmp_path / "demo"
    write_demo(root)
    (root / "stale.txt").write_text("left from an earlier demo")
    write_demo(root)
    assert not (root / "stale.txt").exists()


def test_the_demo_seed_is_the_campaign_seed(tmp_path):
    assert load_spec(write_demo(tmp_path / "a")).seed == 0
    assert load_spec(write_demo(tmp_path / "b", seed=7)).seed == 7
