"""``python -m proxy_models.bench``: matmul peak, then tokens/s, MFU and compile time per proxy size.

MFU is model FLOP/s (PaLM's count: ``6(N + dV) + 12 L d S`` per token) over the
float32 matmul peak measured in the same run, so the ratio does not depend on
the clock speed of whatever machine runs it. Prints JSON on its last line.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from proxy_models import counting, shape, train
from proxy_models.data import load_corpus
from proxy_models.program import load_program, resolve_hyperparameters, seed_source

CONFIGS = ((64, 2), (128, 4), (256, 4))


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best-of float32 ``n x n`` matmul throughput through XLA, in GFLOP/s."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def bench_config(program, corpus, d_model: int, n_layers: int, seq_len: int, batch: int, seconds: float, k: int) -> dict:
    """Compile a fresh fused train call at this shape, then time it for about ``seconds``."""
    cfg = shape.model_config(program, d_model, n_layers, seq_len)
    counts = counting.count_params(program, cfg)
    hp = {**resolve_hyperparameters(program, counts.n_params, 10**7), "batch_size": batch}
    key = jax.random.key(0)
    params = train.init_params(program, cfg, key)
    compiled, state, data, compile_s = train.compile_chunk(program, cfg, hp, 10**6, k, params, corpus, key)
    state, losses = compiled(state, data, key)  # warm-up call
    losses.block_until_ready()
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or calls < 2:
        state, losses = compiled(state, data, key)
        losses.block_until_ready()
        calls += 1
    elapsed = time.perf_counter() - t0
    tokens_per_s = calls * k * batch * seq_len / elapsed
    return {
        "d_model": d_model,
        "n_layers": n_layers,
        "seq_len": seq_len,
        "batch_size": batch,
        "n_params": counts.n_params,
        "tokens_per_s": round(tokens_per_s, 1),
        "model_gflops": round(tokens_per_s * counting.model_flops_per_token(counts, cfg) / 1e9, 2),
        "compile_s": round(compile_s, 3),
        "final_train_loss": float(np.asarray(losses)[-1]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=128, help="context length (campaign default 128)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per config")
    parser.add_argument("--steps-per-call", type=int, default=8)
    args = parser.parse_args(argv)

    program = load_program(seed_source("reference"), "reference")
    corpus = load_corpus()
    peak = matmul_peak_gflops()
    print(f"float32 matmul peak: {peak:.1f} GFLOP/s on {jax.devices()[0].device_kind}", flush=True)
    configs = []
    for d_model, n_layers in CONFIGS:
        row = bench_config(program, corpus, d_model, n_layers, args.seq_len, args.batch, args.seconds, args.steps_per_call)
        row["mfu"] = round(row["model_gflops"] / peak, 4)
        configs.append(row)
        print(
            f"d_model {d_model:>3} x {n_layers} layers: {row['tokens_per_s']:>9,.0f} tok/s  "
            f"{row['model_gflops']:7.1f} GFLOP/s  MFU {row['mfu']:.3f}  compile {row['compile_s']:.2f}s",
            flush=True,
        )
    out = {"peak_gflops": round(peak, 2), "device": jax.devices()[0].device_kind, "configs": configs}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
