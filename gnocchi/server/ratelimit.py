"""Token buckets per key (a client key, a source address), as WireGuard limits
handshakes per source: one peer's excess costs that peer alone.

Pure, clock injected. Each key may spend `burst` at once, then one more every
`refill` seconds. Memory is bounded: at most `max_keys` buckets are kept, and a
bucket that has refilled completely is the same as no bucket, so it is the
first to go.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class Limiter:
    def __init__(
        self,
        burst: int,
        refill: float,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.burst, self.refill, self.max_keys, self.clock = burst, refill, max_keys, clock
        self.buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, at)

    def allow(self, key: Hashable) -> bool:
        """Spend one token of key's bucket: False when it has none left."""
        now = self.clock()
        tokens, at = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) / self.refill)
        if tokens < 1:
            self.buckets[key] = (tokens, now)
            return False
        if key not in self.buckets and len(self.buckets) >= self.max_keys:
            self._forget(now)
        self.buckets[key] = (tokens - 1, now)
        return True

    def _forget(self, now: float) -> None:
        # Full buckets first; if none, the oldest: a flood of new keys cannot
        # grow memory, and at worst gives an old key a fresh burst.
        full = [
            k for k, (t, at) in self.buckets.items() if t + (now - at) / self.refill >= self.burst
        ]
        for key in full or [min(self.buckets, key=lambda k: self.buckets[k][1])]:
            del self.buckets[key]
