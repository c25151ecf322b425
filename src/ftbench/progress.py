"""A sign of life for long work other than training steps (evaluation, generation, calibration):
a rich progress bar on a terminal, else a log line when it starts, every EVERY_S seconds and at the end."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("ftbench")
EVERY_S = 30.0  # seconds between log lines when no bar shows


class Work:
    """Counts `total` units of one piece of work (`label`, e.g. "generate gsm8k"). Use as a
    context manager; `advance(n)` after each chunk."""

    def __init__(self, label: str, total: int, unit: str, enabled: bool = True):
        self.label, self.total, self.unit, self.every_s = label, total, unit, EVERY_S
        self.done = 0
        self.started = self.last_log = time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                    transient=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total)
        elif total:
            log.info("%s: %d %s ...", label, total, unit)

    def __enter__(self) -> Work:
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
        elif now - self.last_log >= self.every_s and self.done < self.total:
            self.last_log = now
            rate = self.done / max(now - self.started, 1e-9)
            log.info("%s: %d/%d %s (%.2f/s, ~%.0f s left)", self.label, self.done, self.total, self.unit, rate,
                     (self.total - self.done) / max(rate, 1e-9))

    def heartbeat(self, detail: str) -> None:
        """Within a long unit (one generation batch): a log line every `every_s` seconds, without a bar."""
        now = time.perf_counter()
        if self.bar is None and now - self.last_log >= self.every_s:
            self.last_log = now
            log.info("%s: %d/%d %s done, %s", self.label, self.done, self.total, self.unit, detail)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
        if exc[0] is None and self.total:
            log.info("%s: %d %s in %.1f s", self.label, self.done, self.unit, time.perf_counter() - self.started)
