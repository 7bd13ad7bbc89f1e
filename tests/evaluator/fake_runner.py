"""A trivial stand-in for ``proxy_models.run``: no JAX, starts in milliseconds.

It really executes the candidate (so hostile code really runs inside the
sandbox) and calls its functions with plain Python values. Its synthetic
learning curve is set by the program's ``hyperparameters``: loss at t tokens
is ``1 + 4.5 * (1 + t * lr / 100) ** -0.5``, so a small learning rate is
clearly worse, and ``learning_rate > 1`` diverges. The fingerprint hashes the
contract functions' bytecode, constants and the strategy, so renaming or
reformatting a program keeps it.
"""

from __future__ import annotations

import hashlib
import math
import types

from proxy_models.program import ProgramError, load_program, resolve_hyperparameters

FLOPS_PER_TOKEN = 6e4
CFG = types.SimpleNamespace(d_model=4, n_heads=1, seq_len=3, n_layers=1, head_dim=4)


def _code_key(code: types.CodeType) -> bytes:
    parts = [code.co_code]
    for const in code.co_consts:
        parts.append(_code_key(const) if isinstance(const, types.CodeType) else repr(const).encode())
    parts.append(repr(code.co_names).encode())
    return b"|".join(parts)


def smoke(source: str) -> dict:
    program = load_program(source)
    params = program.init_block(0, CFG)
    x = [[[0.5] * CFG.d_model for _ in range(CFG.seq_len)]]
    y = program.apply_block(params, x, CFG)
    if not (isinstance(y, list) and len(y) == 1 and len(y[0]) == CFG.seq_len and all(len(r) == CFG.d_model for r in y[0])):
        raise ProgramError("apply_block must return x with the shape it was given (1, 3, 4)")
    loss = sum(sum(r) for r in y[0]) / (CFG.seq_len * CFG.d_model)
    if not math.isfinite(loss):
        raise ValueError(f"smoke test: the loss at initialisation is not finite ({loss})")
    h = hashlib.sha256()
    for name in ("init_block", "apply_block", "hyperparameters"):
        h.update(_code_key(getattr(program, name).__code__))
    h.update(repr(sorted(resolve_hyperparameters(program, 10**5, 10**6).items())).encode())
    return {
        "loss": loss,
        "n_params": 1000,
        "n_embedding": 100,
        "n_active": 1000,
        "flops_per_token_xla": FLOPS_PER_TOKEN,
        "flops_per_token_analytic": FLOPS_PER_TOKEN,
        "fingerprint": h.hexdigest()[:32],
    }


def train_run(source, n_params, n_tokens, seed=0, corpus=None, should_stop=None, seq_len=None) -> dict:
    program = load_program(source)
    hp = resolve_hyperparameters(program, int(n_params), int(n_tokens))
    lr = hp["learning_rate"]
    curve, status, message = [], "ok", ""
    points = 20
    for i in range(1, points + 1):
        tokens = int(n_tokens * i / points)
        loss = 1 + 4.5 * (1 + tokens * lr / 100) ** -0.5 if lr <= 1 else float("nan")
        curve.append([i, tokens, loss])
        if not math.isfinite(loss):
            status, message = "diverged", f"train loss {loss} at step {i}"
            break
        if should_stop is not None and should_stop(tokens, loss):
            status, message = "pruned", f"stopped at {tokens} tokens"
            break
    trained = curve[-1][1]
    return {
        "status": status,
        "message": message,
        "val_loss": curve[-1][2] if status == "ok" else None,
        "curve": curve,
        "n_params": int(n_params),
        "n_tokens": trained,
        "flops_per_token_analytic": FLOPS_PER_TOKEN,
        "flops_per_token_xla": FLOPS_PER_TOKEN,
        "flops": FLOPS_PER_TOKEN * trained,
        "compile_s": 0.0,
        "train_s": 0.0,
        "wall_s": 0.0,
        "hyperparameters": hp,
        "seq_len": seq_len,  # None: the caller left the runner's default
    }
