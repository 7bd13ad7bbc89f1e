"""Candidate programs: load one from source, check its contract, resolve its strategy.

A candidate is one Python file (see DESIGN.md, "Candidate programs") defining
``init_block(key, cfg)``, ``apply_block(params, x, cfg)`` and
``hyperparameters(n_params, n_tokens)``, optionally ``make_optimizer(hp, total_steps)``
and ``model_options(cfg)``. ``apply_block`` may return ``x`` or ``(x, aux_loss)``
(for instance a mixture of experts' load-balancing loss).

Loading executes the source: the evaluator's static stage and sandbox must come
first for untrusted code; this module only checks the contract.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import types
from collections.abc import Callable, Mapping
from typing import Any

PROGRAMS_DIR = pathlib.Path(__file__).parent / "programs"
REQUIRED = ("init_block", "apply_block", "hyperparameters")
OPTIONAL = ("make_optimizer", "model_options")

# The reference recipe's strategy (DESIGN.md): everything a program's
# ``hyperparameters`` leaves out takes these values.
DEFAULT_HYPERPARAMETERS: dict[str, Any] = {
    "learning_rate": 3e-3,
    "batch_size": 16,
    "warmup_fraction": 0.05,
    "schedule": "cosine",  # cosine | linear | constant | wsd
    "final_lr_fraction": 0.05,
    "decay_fraction": 0.2,  # wsd only: the final fraction of steps spent decaying
    "weight_decay": None,  # per-step decoupled decay at peak LR; None means 1/T
    "clip": 1.0,  # global gradient norm; None disables
    "z_loss": 1e-4,
    "beta1": 0.9,
    "beta2": 0.99,
    "eps": 1e-8,
    "optimizer": "adamw",  # adamw | diloco
    "diloco_replicas": 2,
    "diloco_inner_steps": 8,
    "diloco_outer_lr": 0.7,
    "diloco_outer_momentum": 0.9,
}
# Settings that only some strategies read. A value no part of the strategy reads
# changes nothing, so two programs that differ only there are one experiment
# (the fingerprint drops it, and the mutator does not edit it).
READ_WHEN: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "decay_fraction": lambda hp: hp["schedule"] == "wsd",
    "final_lr_fraction": lambda hp: hp["schedule"] != "constant",
    **{key: (lambda hp: hp["optimizer"] == "diloco") for key in
       ("diloco_replicas", "diloco_inner_steps", "diloco_outer_lr", "diloco_outer_momentum")},
}


def is_read(key: str, hp: Mapping[str, Any]) -> bool:
    """Whether the built-in optimizer reads ``key`` under ``hp`` (its schedule and optimizer)."""
    return key not in READ_WHEN or READ_WHEN[key]({**DEFAULT_HYPERPARAMETERS, **hp})


def effective_hyperparameters(hp: Mapping[str, Any]) -> dict[str, Any]:
    """``hp`` without the settings the built-in optimizer does not read under it."""
    return {k: v for k, v in hp.items() if is_read(k, hp)}


DEFAULT_MODEL_OPTIONS: dict[str, Any] = {"tie_embeddings": False, "positions": "none", "final_norm": "rms"}


class ProgramError(ValueError):
    """A candidate program does not meet the contract; the message says how."""


@dataclasses.dataclass(frozen=True)
class Program:
    """A loaded candidate: its source and the callables it defines."""

    source: str
    name: str
    init_block: Callable
    apply_block: Callable
    hyperparameters: Callable
    make_optimizer: Callable | None = None
    model_options: Callable | None = None


def load_program(source: str, name: str = "candidate") -> Program:
    """Execute ``source`` in a fresh module and return its contract functions.

    Raises:
      ProgramError: a required function is missing or not callable.
      SyntaxError, and whatever the module raises at import time.
    """
    module = types.ModuleType(name)
    module.__file__ = f"<{name}>"
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)  # noqa: S102 - sandboxed by the caller
    fns = {}
    for attr in REQUIRED + OPTIONAL:
        fn = module.__dict__.get(attr)
        if fn is None and attr in REQUIRED:
            raise ProgramError(f"program {name!r} does not define {attr}(); the contract needs {', '.join(REQUIRED)}")
        if fn is not None and not callable(fn):
            raise ProgramError(f"program {name!r}: {attr} is a {type(fn).__name__}, not a function")
        fns[attr] = fn
    return Program(source=source, name=name, **fns)


def load_program_file(path: str | pathlib.Path) -> Program:
    path = pathlib.Path(path)
    return load_program(path.read_text(), name=path.stem)


def seed_source(name: str = "reference") -> str:
    """Source of a shipped seed program: ``reference`` (the recipe) or ``weakened``."""
    path = PROGRAMS_DIR / f"{name}.py"
    if not path.exists():
        shipped = sorted(p.stem for p in PROGRAMS_DIR.glob("*.py"))
        raise ValueError(f"no shipped program {name!r}; shipped: {shipped}")
    return path.read_text()


def resolve_hyperparameters(program: Program, n_params: int, n_tokens: int) -> dict[str, Any]:
    """The program's strategy at (N, D), defaults filled in and values checked."""
    raw = program.hyperparameters(int(n_params), int(n_tokens))
    if not isinstance(raw, Mapping):
        raise ProgramError(f"hyperparameters() must return a dict, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(DEFAULT_HYPERPARAMETERS))
    if unknown:
        raise ProgramError(f"hyperparameters() returned unknown keys {unknown}; known: {sorted(DEFAULT_HYPERPARAMETERS)}")
    hp = {**DEFAULT_HYPERPARAMETERS, **raw}
    _check_hyperparameters(hp)
    return hp


def _check_hyperparameters(hp: Mapping[str, Any]) -> None:
    def positive(key):
        value = hp[key]
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ProgramError(f"hyperparameter {key} must be a positive finite number, got {value!r}")

    for key in ("learning_rate", "batch_size", "eps"):
        positive(key)
    if int(hp["batch_size"]) != hp["batch_size"]:
        raise ProgramError(f"batch_size must be a whole number of sequences, got {hp['batch_size']!r}")
    for key in ("warmup_fraction", "final_lr_fraction", "decay_fraction", "beta1", "beta2"):
        if not 0 <= hp[key] < 1 + (key in ("final_lr_fraction", "decay_fraction")):
            raise ProgramError(f"hyperparameter {key} must lie in [0, 1), got {hp[key]!r}")
    if hp["schedule"] not in ("cosine", "linear", "constant", "wsd"):
        raise ProgramError(f"schedule must be cosine, linear, constant or wsd, got {hp['schedule']!r}")
    if hp["optimizer"] not in ("adamw", "diloco"):
        raise ProgramError(f"optimizer must be adamw or diloco, got {hp['optimizer']!r}")
    for key in ("weight_decay", "clip"):
        if hp[key] is not None and (not isinstance(hp[key], (int, float)) or hp[key] < 0):
            raise ProgramError(f"{key} must be None or a non-negative number, got {hp[key]!r}")
    if hp["z_loss"] < 0:
        raise ProgramError(f"z_loss must be non-negative, got {hp['z_loss']!r}")


def resolve_model_options(program: Program, cfg: Any) -> dict[str, Any]:
    """The program's choices for the scaffolding around its blocks."""
    raw = program.model_options(cfg) if program.model_options else {}
    unknown = sorted(set(raw) - set(DEFAULT_MODEL_OPTIONS))
    if unknown:
        raise ProgramError(f"model_options() returned unknown keys {unknown}; known: {sorted(DEFAULT_MODEL_OPTIONS)}")
    return {**DEFAULT_MODEL_OPTIONS, **raw}
