"""Plain progress lines for logs that are not a terminal (cluster job logs, CI, a pipe, a notebook).

``ProgressLines`` turns ``update(i)`` calls into at most one line every ``every`` items or ``seconds``
(whichever comes first), plus the last item, each a complete line without carriage returns::

    step 120/480 (25%) epoch 3/12 loss 0.4312 | 1m05s elapsed, ETA 3m15s
    predict 3/10 patient003.nii.gz | 12s elapsed, ETA 28s

The ETA is the items still to do times the mean time per item of this session (items done before a
resume are not counted in the rate). Training uses it through ``train.engine.LineProgress``, the
commands that work subject by subject through ``cli.common.subject_progress``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable


def lines_every(total: int, lines: int = 40) -> int:
    """Items between two lines so that ``total`` items print about ``lines`` lines (at least 1)."""
    return max(1, math.ceil(max(0, int(total)) / max(1, lines)))


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h07m``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class ProgressLines:
    """``update(i, detail)`` after item ``i`` (1-based) of ``total``; emits ``"<what> i/total (p%) <detail> |
    <elapsed> elapsed, ETA <eta>"`` through ``emit`` when ``every`` items or ``seconds`` passed since the
    last line, and always at ``i == total``. ``start``: items already done before this session (a resume)."""

    def __init__(self, total: int, what: str = "", emit: Callable[[str], None] = stderr_line,
                 every: int | None = None, seconds: float = 60.0, start: int = 0, clock=time.monotonic):
        self.total, self.what, self.emit = int(total), what, emit
        self.every = every or lines_every(self.total - start)
        self.seconds, self.start, self.clock = float(seconds), int(start), clock
        self.t0 = self.last_time = clock()
        self.last_item = int(start)

    def due(self, i: int) -> bool:
        """Whether item ``i`` gets a line."""
        return (i >= self.total or i - self.last_item >= self.every
                or (i > self.last_item and self.clock() - self.last_time >= self.seconds))

    def eta(self, i: int) -> float:
        done = i - self.start
        if done <= 0:
            return float("nan")
        return (self.clock() - self.t0) / done * max(0, self.total - i)

    def line(self, i: int, detail: str = "") -> str:
        pct = f" ({100 * i / self.total:.0f}%)" if self.total > 0 else ""
        head = f"{self.what} " if self.what else ""
        return (f"{head}{i}/{self.total}{pct}{' ' + detail if detail else ''} | "
                f"{duration(self.clock() - self.t0)} elapsed, ETA {duration(self.eta(i))}")

    def update(self, i: int, detail: str | Callable[[], str] = "") -> str | None:
        """Emit (and return) the line for item ``i`` if it is due; ``detail`` may be a function, called
        only then (e.g. one that reads a loss off the GPU)."""
        if not self.due(i):
            return None
        text = self.line(i, detail() if callable(detail) else detail)
        self.last_item, self.last_time = i, self.clock()
        self.emit(text)
        return text
