"""``make demo``: a short offline campaign from a deliberately weakened seed, then the ranking.

The built-in mutator proposes, real proxies are trained on the default corpus
(the Python standard library's text), the reference recipe is evaluated beside
the search as a yardstick, and the run ends with the ranking by predicted loss
at C*. Sized to finish in about ten minutes on two cores.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys

DEMO_DIR = pathlib.Path("runs/demo")
DEMO_OVERRIDES = {
    "\nseed = 0 ": "\nseed = {seed} ",
    "candidates = 40": "candidates = {candidates}",
    'compare = []': 'compare = ["reference.py"]',
    "base_n = 1e5": "base_n = 5e4",
    "n_min = 5e4": "n_min = 3e4",
    "n_max = 4e5": "n_max = 1.5e5",
    "d_max = 2e6": "d_max = 4e6",
    "target_flops = 1e18": "target_flops = 1e17",
}


def write_demo(root: pathlib.Path, candidates: int = 32, simulate: bool = False, seed: int = 0) -> pathlib.Path:
    """A fresh demo campaign folder: weakened seed, reference yardstick, small proxies; ``seed`` the campaign's."""
    from proxy_models.program import seed_source
    from search.config import SPEC_TEMPLATE

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / "seed.py").write_text(seed_source("weakened"))
    (root / "reference.py").write_text(seed_source("reference"))
    text = SPEC_TEMPLATE.format(name="demo", spec_name=root / "campaign.toml")
    for old, new in DEMO_OVERRIDES.items():
        assert old in text, old  # the template and the demo must not drift apart
        text = text.replace(old, new.format(candidates=candidates, seed=int(seed)))
    if simulate:
        text = text.replace("simulate = false", "simulate = true")
    (root / "campaign.toml").write_text(text)
    return root / "campaign.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(DEMO_DIR), help="where to write the campaign (replaced)")
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--simulate", action="store_true", help="synthetic losses (seconds, not minutes)")
    args = parser.parse_args(argv)

    from search.campaign import run_campaign
    from search.config import load_spec

    spec_path = write_demo(pathlib.Path(args.dir), args.candidates, args.simulate)
    print(f"demo campaign: {spec_path} (weakened seed, built-in mutator, reference recipe as yardstick)")
    code = run_campaign(load_spec(spec_path), install_signals=True)  # Ctrl-C: a clean stop, as `scalesearch run`
    print(f"inspect it: scalesearch status {spec_path.parent / 'campaign.sqlite'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
