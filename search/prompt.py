"""Prompts for a code model: the island's programs, their laws and failures, and the contract.

``build_prompt`` is a pure function of its arguments (and of the helper
signatures in ``proxy_models/layers.py``, read once with ``ast``). It shows the
parents in ascending order of quality, worst first and best last, as FunSearch
does, each with its score, its fitted law and what was changed; then the
recent failures with their messages; then asks for a change to the evolvable
blocks only, as SEARCH/REPLACE blocks against the best program or as whole
blocks. ``SEARCH``, ``DIVIDER`` and ``REPLACE`` are the markers the proposer
parses.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import math
import pathlib
from collections.abc import Sequence

from db.rows import Failure, Fit
from evaluator import pyast
from proxy_models.program import DEFAULT_HYPERPARAMETERS, DEFAULT_MODEL_OPTIONS
from search import programs

SEARCH = "<<<<<<< SEARCH"
DIVIDER = "======="
REPLACE = ">>>>>>> REPLACE"
STAGES = {0: "static check", 1: "smoke test", 2: "base run", 3: "scaling runs"}
# DESIGN.md, "Candidate programs"; the static stage's own list wins where it exists.
ALLOWED_IMPORTS = ("jax", "jax.numpy", "jax.nn", "jax.lax", "jax.random", "optax", "math", "functools")


@dataclasses.dataclass(frozen=True)
class Parent:
    """A program as a prompt shows it.

    Attributes:
      program_id: its id in the campaign database.
      source: the whole program.
      score: lower is better (``search.population.score``); None if unknown.
      stage: the cascade stage it reached.
      fit: its current scaling-law fit, if any.
      note: what was changed from its parent.
    """

    program_id: int
    source: str
    score: float | None = None
    stage: int = 2
    fit: Fit | None = None
    note: str = ""


def _allowed_imports() -> tuple[str, ...]:
    try:
        from evaluator.static import ALLOWED_MODULES
    except ImportError:
        return ALLOWED_IMPORTS
    return tuple(sorted(m for m in ALLOWED_MODULES if m != "proxy_models.layers"))


@functools.cache
def helpers_text() -> str:
    """One line per public helper in ``proxy_models.layers``: signature and first docstring line."""
    path = pathlib.Path(importlib.util.find_spec("proxy_models.layers").origin)
    lines = []
    for node in pyast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            doc = (ast.get_docstring(node) or "").strip().splitlines()
            returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
            lines.append(f"- L.{node.name}({ast.unparse(node.args)}){returns}: {doc[0] if doc else ''}")
    return "\n".join(lines)


def contract_text(evolve: Sequence[str]) -> str:
    """What a program defines, what it may import, and the strategy's keys with their defaults."""
    defaults = "\n".join(f"  {k}: {v!r}" for k, v in DEFAULT_HYPERPARAMETERS.items())
    options = ", ".join(f"{k} ({v!r})" for k, v in DEFAULT_MODEL_OPTIONS.items())
    return f"""## The contract

A program is one Python file. The blocks between `# EVOLVE-BLOCK-START <name>` and
`# EVOLVE-BLOCK-END` evolve ({", ".join(f"`{b}`" for b in evolve)} in this campaign); the
rest is fixed. It defines:

- `init_block(key, cfg) -> params` and `apply_block(params, x, cfg) -> x`: one residual
  block of a causal decoder-only language model. `x` is `[batch, seq, d_model]`; `cfg` has
  `d_model`, `n_heads`, `seq_len`, `n_layers` and `head_dim`. `apply_block` may return
  `(x, aux_loss)` with a scalar auxiliary loss (a mixture of experts' load balancing). The
  harness stacks `n_layers` blocks between a byte embedding (vocabulary 256) and an
  unembedding, and picks width and depth to reach each requested N (non-embedding
  parameters, counted from `params`), so a block may use any width it likes.
- `hyperparameters(n_params, n_tokens) -> dict`: the training strategy as a function of
  scale. Keys left out take these defaults (weight_decay None means 1/T, T the steps;
  schedule is cosine, linear, constant or wsd; optimizer is adamw or diloco):
{defaults}
- optionally `model_options(cfg) -> dict` with any of: {options}; positions is "none"
  (the block brings its own, e.g. rotary) or "learned".

Allowed imports: {", ".join(_allowed_imports())}, and `from proxy_models import layers as L`.
Anything else, and file, process or interpreter access, is refused before the program runs.
Helpers in `proxy_models.layers`:
{helpers_text()}
"""


def describe_fit(fit: Fit) -> str:
    """``L(N, D) = E + A / N^alpha + B / D^beta`` with the fitted numbers, and the runs behind it."""
    p = fit.params
    if {"E", "A", "alpha", "B", "beta"} <= set(p):
        law = f"L(N, D) = {p['E']:.3g} + {p['A']:.3g} / N^{p['alpha']:.3g} + {p['B']:.3g} / D^{p['beta']:.3g}"
    else:
        law = ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in sorted(p.items()))
    return f"{fit.law} law {law} (from {fit.n_runs} runs)"


def _heading(index: int, parent: Parent) -> str:
    parts = [f"### Program {index} (id {parent.program_id})"]
    fit = parent.fit
    if fit is not None and fit.loss_at_c_star is not None:
        interval = f" [{fit.loss_low:.4f}, {fit.loss_high:.4f}]" if fit.loss_low is not None and fit.loss_high is not None else ""
        parts.append(f"predicted loss at C*: {fit.loss_at_c_star:.4f}{interval}")
    elif parent.score is not None:
        parts.append(f"score {parent.score:.4f} (its base-run loss moved to the C* scale; no fit yet)")
    parts.append(f"reached: {STAGES.get(parent.stage, parent.stage)}")
    lines = [", ".join(parts)]
    if fit is not None and fit.params:
        lines.append(f"Fitted {describe_fit(fit)}.")
    if parent.note:
        lines.append(f"Changed from its parent: {parent.note}")
    return "\n".join(lines)


def _shown(parent: Parent, evolve: Sequence[str], whole: bool) -> str:
    if whole:
        return parent.source.rstrip("\n")
    blocks = programs.blocks(parent.source)
    parts = [f"# EVOLVE-BLOCK-START {n}\n{blocks[n]}# EVOLVE-BLOCK-END" for n in evolve if n in blocks]
    return "\n\n".join(parts) if parts else parent.source.rstrip("\n")


def _message(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit // 2] + " ... " + text[-limit // 2 :]


def build_prompt(
    parents: Sequence[Parent],
    failures: Sequence[Failure] = (),
    *,
    evolve: Sequence[str] = ("model", "strategy"),
    target_flops: float | None = None,
    max_failures: int = 5,
    max_message_chars: int = 400,
) -> str:
    """The prompt for one proposal: parents worst first and best last, failures, the task.

    Raises:
      ValueError: no parents.
    """
    if not parents:
        raise ValueError("a prompt needs at least one parent program")
    ordered = sorted(parents, key=lambda p: -math.inf if p.score is None else -p.score)
    c_star = f" C* = {target_flops:.3g} FLOPs".replace("e+", "e") if target_flops else " C*"
    out = [
        "You are improving a small decoder-only language model and the strategy that trains it.",
        "Programs are ranked by the validation loss (nats per byte) that their fitted scaling law",
        f"L(N, D) = E + A / N^alpha + B / D^beta predicts at the target compute{c_star}, with N and D",
        "allocated compute-optimally for each program. Lower is better. A change that helps only at",
        "the smallest sizes but scales worse is a regression.",
        "",
        contract_text(evolve),
        "## Programs so far, worst first and best last",
    ]
    for i, parent in enumerate(ordered, 1):
        whole = i == len(ordered)
        out += ["", _heading(i, parent), "```python", _shown(parent, evolve, whole), "```"]
    if failures:
        out += ["", "## Recent failures (do not repeat them)"]
        for f in list(failures)[:max_failures]:
            where = STAGES.get(f.stage, f.stage)
            out.append(f"- program {f.program_id} ({where}, {f.status}): {_message(f.message, max_message_chars)}")
    names = ", ".join(f"`{b}`" for b in evolve)
    out += [
        "",
        "## Your task",
        f"Propose one improvement to the best program (Program {len(ordered)}). Change only the code inside",
        f"the evolve block(s) {names}; keep the function names and signatures of the contract. Start with",
        "one sentence that says what you change and why it should lower the loss at C*. Then give either",
        "SEARCH/REPLACE blocks, each SEARCH part copied exactly from the best program:",
        "",
        SEARCH,
        "lines copied from the best program",
        DIVIDER,
        "the lines that replace them",
        REPLACE,
        "",
        "or whole blocks, each from its `# EVOLVE-BLOCK-START <name>` line to its `# EVOLVE-BLOCK-END`",
        "line, in a ```python fence.",
    ]
    return "\n".join(out) + "\n"
