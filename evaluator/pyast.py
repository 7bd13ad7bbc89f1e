"""``ast.parse`` that is safe to call from several threads at once.

CPython 3.11's AST constructor keeps its recursion-depth bookkeeping in
per-interpreter state, so two threads converting trees at the same time can
raise ``SystemError: AST constructor recursion depth mismatch`` (gh-106905,
fixed in 3.12). Proposers, the campaign's evaluation threads and the static
stage all parse programs, so every parse in the package goes through one lock.
The lock is re-entrant because the static stage holds it across a whole check.
"""

from __future__ import annotations

import ast
import threading

LOCK = threading.RLock()


def parse(source: str, mode: str = "exec") -> ast.Module | ast.Expression:
    """``ast.parse(source, mode=mode)`` under the process-wide AST lock."""
    with LOCK:
        return ast.parse(source, mode=mode)

