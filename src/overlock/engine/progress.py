"""Progress of training: a live bar on a terminal, a few lines in a log file.

tqdm redraws its bar on every update; where the output is a file or a pipe rather than a terminal, every redraw
stays in the log, tens of thousands of them in a long run. There the progress goes to the log as one line every
``interval`` seconds and one when the counted steps end (an epoch's batches, or a run's iterations).
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Callable, TextIO

from tqdm import tqdm

_logger = logging.getLogger(__name__)

LOG_INTERVAL_S = 20.0  # seconds between progress lines where the output is not a terminal


class Progress:
    """Steps done out of ``total`` (from ``initial``), counted in ``unit``, with the latest loss and learning rate.

    A tqdm bar when ``stream`` is a terminal; otherwise a log line at most every ``interval`` seconds (by
    ``clock``) and one on :meth:`close`. Nothing at all when not ``enabled`` (processes other than the first).
    """

    def __init__(
        self,
        total: int,
        initial: int = 0,
        desc: str = "",
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        unit: str = "batches",
    ):
        stream = sys.stderr if stream is None else stream
        self.total, self.done, self.desc, self.unit = total, initial, desc, unit
        self.enabled, self.interval, self.clock = enabled, interval, clock
        self.postfix = ""
        self.start = self.last_line = clock()
        is_terminal = getattr(stream, "isatty", lambda: False)()
        self.bar = tqdm(total=total, initial=initial, desc=desc, file=stream, leave=False) \
            if enabled and is_terminal else None

    def update(self, steps: int = 1) -> None:
        self.done += steps
        if self.bar is not None:
            self.bar.update(steps)
        elif self.enabled and self.clock() - self.last_line >= self.interval:
            self._log_line()

    def set_postfix(self, **values: str) -> None:
        """The figures shown beside the count (e.g. ``loss='0.512'``)."""
        self.postfix = ", ".join(f"{key} {value}" for key, value in values.items())
        if self.bar is not None:
            self.bar.set_postfix(values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._log_line()

    def _log_line(self) -> None:
        self.last_line = self.clock()
        figures = f", {self.postfix}" if self.postfix else ""
        elapsed = self.last_line - self.start
        _logger.info("%s: %d/%d %s%s, %.0f s", self.desc, self.done, self.total, self.unit, figures, elapsed)
