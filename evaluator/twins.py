"""Twins: candidates that trace the same computation, caught while they are in flight together.

The caller's ``known_fingerprints`` catch programs evaluated before a batch was
submitted. Siblings of one batch (an LLM's samples that differ only in names,
say) are in flight together, so neither knows the other's fingerprint when it
is submitted, and without this both would train. Here a candidate that passed
its smoke stage waits for the smoke stage of every candidate submitted before
it (seconds: those started first), then is a duplicate of the earliest with the
same fingerprint. Deciding in submission order, not in the order smoke stages
happen to finish, keeps a campaign's replay exact: the same twin trains every
time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Twins:
    """Fingerprints reported by the candidates one cascade has run, in submission order.

    Args:
      wait_s: the longest a candidate waits for an earlier one's smoke stage; past it
        (an executor that does not start jobs in order), it goes on as no one's twin.
      monotonic: the clock for that limit.
    """

    def __init__(self, wait_s: float, monotonic: Callable[[], float] = time.monotonic):
        self.wait_s, self.monotonic = wait_s, monotonic
        self._lock = threading.Lock()
        self._next = 0
        self._unsettled: dict[int, threading.Event] = {}  # submitted, smoke not yet reported
        self._first: dict[str, tuple[int, str]] = {}  # fingerprint -> (number, name) of its earliest candidate

    def enter(self) -> int:
        """Number a newly submitted candidate; it must be settled at least once (settling is idempotent)."""
        with self._lock:
            number, self._next = self._next, self._next + 1
            self._unsettled[number] = threading.Event()
        return number

    def settle(self, number: int, name: str, fingerprint: str | None) -> None:
        """Candidate ``number`` reported ``fingerprint`` (None: it never will). Idempotent."""
        with self._lock:
            first = self._first.get(fingerprint) if fingerprint else None
            if fingerprint and (first is None or first[0] > number):
                self._first[fingerprint] = (number, name)
            event = self._unsettled.pop(number, None)
        if event is not None:
            event.set()

    def twin_of(self, number: int, fingerprint: str) -> str | None:
        """The name of the earliest candidate submitted before ``number`` with ``fingerprint``, or None.

        Waits until every candidate submitted before it has settled (or ``wait_s`` has passed).
        """
        deadline = self.monotonic() + self.wait_s
        with self._lock:
            earlier = [event for n, event in self._unsettled.items() if n < number]
        for event in earlier:
            event.wait(max(0.0, deadline - self.monotonic()))
        with self._lock:
            first = self._first.get(fingerprint)
        return first[1] if first is not None and first[0] < number else None
