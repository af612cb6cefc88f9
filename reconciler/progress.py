"""Progress of a long apply: a bar on a terminal, periodic lines in a CI log."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import click

from reconciler.apply import ActionResult

# Runs with fewer actions finish too fast for progress to help.
MIN_ACTIONS = 20
LINE_INTERVAL = 10.0


class Progress:
    """Count the finished actions and show the count, with an estimate of time left."""

    def __init__(self, total: int, *, interactive: bool | None = None) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.enabled = total >= MIN_ACTIONS
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._last_line = self._started
        self._bar: Any = None
        if self.enabled and self.interactive:
            self._bar = click.progressbar(
                length=total,
                label="Applying",
                show_eta=True,
                show_pos=True,
                file=sys.stderr,
            )
            self._bar.__enter__()

    def advance(self, result: ActionResult) -> None:
        """Count one finished action."""
        if not self.enabled:
            return
        with self._lock:
            self.done += 1
            self.failed += 0 if result.succeeded else 1
            if self._bar is not None:
                self._bar.update(1)
            elif time.monotonic() - self._last_line >= LINE_INTERVAL:
                self._last_line = time.monotonic()
                click.echo(self.line(), err=True)

    def line(self) -> str:
        """Describe the progress in one line, such as for a CI log."""
        elapsed = time.monotonic() - self._started
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        return (
            f"applied {self.done}/{self.total} ({self.failed} not done), "
            f"about {left:.0f}s left"
        )

    def close(self) -> None:
        """End the bar, or print the last line."""
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
        elif self.enabled and self.done:
            click.echo(self.line(), err=True)
