"""A limit on requests in flight, shared by every thread of a run.

A 429 response halves the limit and pauses every sender until Retry-After has
passed, so that the whole run slows down, not only the request that was
refused. Each run of successes as long as the limit raises it by one, back up
to the maximum the user chose.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class Throttle:
    """Admit at most `limit` requests at once; adapt the limit to 429 responses."""

    def __init__(self, maximum: int) -> None:
        self.maximum = max(1, maximum)
        self.limit = self.maximum
        self._in_flight = 0
        self._successes = 0
        self._paused_until = 0.0
        self._condition = threading.Condition()

    def acquire(self) -> None:
        """Wait for a free slot and for the end of any pause."""
        with self._condition:
            while True:
                pause = self._paused_until - time.monotonic()
                if pause > 0:
                    self._condition.wait(pause)
                elif self._in_flight < self.limit:
                    self._in_flight += 1
                    return
                else:
                    self._condition.wait()

    def release(self, *, throttled: bool = False, retry_after: float = 0.0) -> None:
        """Free a slot; after a 429, shrink the limit and pause every sender."""
        with self._condition:
            self._in_flight -= 1
            if throttled:
                self._slow_down(retry_after)
            else:
                self._successes += 1
                if self._successes >= self.limit and self.limit < self.maximum:
                    self.limit += 1
                    self._successes = 0
            self._condition.notify_all()

    def _slow_down(self, retry_after: float) -> None:
        self._successes = 0
        if self.limit > 1:
            self.limit = max(1, self.limit // 2)
            log.info(
                "throttled by the portal: %d requests in flight at most", self.limit
            )
        self._paused_until = max(self._paused_until, time.monotonic() + retry_after)
