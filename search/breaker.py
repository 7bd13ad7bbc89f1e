"""A circuit breaker: stop calling what keeps failing, probe it again after a cool-down.

The language-model proposer keeps one per model and one for the endpoint
(``search.llm_propose``): while a breaker is open its model is not drawn, and
the built-in mutator proposes instead, so a campaign never stalls on a dead
endpoint. Each failed probe doubles the cool-down, up to a ceiling.

References:
  Nygard 2007, "Release It!", ch. 5 (the circuit breaker pattern).
"""

from __future__ import annotations


class Breaker:
    """Closed; open after ``failures`` consecutive failures; half-open (one probe) after the cool-down."""

    def __init__(self, failures: int, cooldown_s: float, max_cooldown_s: float):
        self.failures, self.base_cooldown, self.max_cooldown = failures, cooldown_s, max_cooldown_s
        self.count, self.cooldown = 0, cooldown_s
        self.open_until: float | None = None
        self.probing = False
        self.last_error = ""

    def allows(self, now: float) -> bool:
        return self.open_until is None or (now >= self.open_until and not self.probing)

    def claim(self, now: float) -> None:
        """The caller is about to use it: if it was open and due, this use is the probe."""
        if self.open_until is not None and now >= self.open_until:
            self.probing = True

    def release(self) -> None:
        """A probe that ended with no verdict: the next use may probe again."""
        self.probing = False

    def success(self) -> None:
        self.count, self.cooldown, self.open_until, self.probing = 0, self.base_cooldown, None, False

    def failure(self, now: float, error: str) -> None:
        self.count += 1
        self.last_error = error
        if self.probing:
            self.cooldown = min(2 * self.cooldown, self.max_cooldown)
            self.open_until, self.probing = now + self.cooldown, False
        elif self.open_until is None and self.count >= self.failures:
            self.open_until = now + self.cooldown
