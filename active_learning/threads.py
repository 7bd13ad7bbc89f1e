"""Run numerical entry points with one BLAS thread.

The fits multiply matrices of a few hundred entries, where BLAS threads only
add synchronisation; on a busy machine a multithreaded OpenBLAS made one fit
40x slower. Public entry points wrap themselves with `one_blas_thread`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from threadpoolctl import threadpool_limits

P = ParamSpec("P")
R = TypeVar("R")


def one_blas_thread(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator: call fn with BLAS limited to one thread."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper
