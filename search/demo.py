"""``make demo``: train the reference proxy at two sizes and print their losses.

(Grows into a short offline search campaign once the runner lands.)
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    from proxy_models.program import seed_source
    from proxy_models.run import train_run

    source = seed_source("reference")
    print("Training the reference recipe at two sizes on the default corpus (Python stdlib text).")
    rows = []
    for n, d in [(1e5, 5e5), (6e5, 5e5)]:
        t = time.perf_counter()
        r = train_run(source, n, d, seed=0, on_progress=None)
        rows.append(r)
        print(
            f"  N={r['n_params']:>8,d} (d_model {r['d_model']:>3}, {r['n_layers']} layers)  D={r['n_tokens']:>9,d}  "
            f"val loss {r['val_loss']:.4f} nats/byte  [{r['status']}, {r['tokens_per_s']:,.0f} tok/s, "
            f"{time.perf_counter() - t:.0f}s]"
        )
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
