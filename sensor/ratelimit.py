"""A token bucket: at most `per_second` takes a second on average, bursts up to one second's worth."""
import time


class TokenBucket:
    def __init__(self, per_second: float):
        self.per_second = per_second
        self._tokens, self._last = per_second, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.per_second, self._tokens + (now - self._last) * self.per_second)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
