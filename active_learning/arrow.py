"""Arrow-shaped symmetric systems: a shared block bordered by one small block per candidate.

The Hessian of a pooled fit's (mu, delta) has this shape: the shared parameters couple to
every candidate, candidates do not couple to each other. Eliminating the candidates' blocks
leaves the Schur complement of the shared one, so a solve costs K small inversions and one
of size p, linear in the number of candidates K.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Arrow:
    """Symmetric matrix [[G, C_1 .. C_K], [C_k^T, D_k]] with G [p,p], C [K,p,m], D [K,m,m]."""

    g: np.ndarray
    c: np.ndarray
    d: np.ndarray

    def parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(Schur complement inverse S^-1 [p,p], B_k = D_k^-1 C_k^T [K,m,p], D_k^-1 [K,m,m])."""
        d_inv = np.linalg.inv(self.d)
        b = d_inv @ np.swapaxes(self.c, 1, 2)
        schur = self.g - np.einsum("kpm,kmq->pq", self.c, b)
        return pd_inverse(schur), b, d_inv

    def solve(self, rhs_g: np.ndarray, rhs_k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s_inv, b, d_inv = self.parts()
        x_g = s_inv @ (rhs_g - np.einsum("kpm,km->p", self.c, np.einsum("kmn,kn->km", d_inv, rhs_k)))
        x_k = np.einsum("kmn,kn->km", d_inv, rhs_k) - np.einsum("kmp,p->km", b, x_g)
        return x_g, x_k


def pd_inverse(a: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive (semi)definite matrix, robust to near-singularity."""
    a = 0.5 * (a + a.T)
    w, v = np.linalg.eigh(a)
    w = np.maximum(w, 1e-12 * max(float(w.max()), 1e-300))
    return (v / w) @ v.T
