"""Progress display: a rich progress bar on a terminal, plain lines on stderr otherwise; and
the clock of a sweep (elapsed time and ETA over its points).

stdout stays reserved for the artifact path a command prints last (scripts read that line).

    python -c "from lthfast.progress import make_progress; p = make_progress(); p('demo', 5, 10)"
"""

from __future__ import annotations

import sys
import time
from typing import Callable

ProgressFn = Callable[[str, int, int], None]  # progress(label, step, total)


def make_progress(enabled: bool = True) -> ProgressFn | None:
    if not enabled:
        return None
    if sys.stderr.isatty():
        return RichProgress()
    return PlainProgress()


class PlainProgress:
    """One line per stage at about every 25% and at the end; cheap enough for log files."""

    def __init__(self):
        self._last: dict[str, int] = {}

    def __call__(self, label: str, step: int, total: int) -> None:
        quarter = 4 * step // max(total, 1)
        if self._last.get(label) != quarter or step == total:
            self._last[label] = quarter
            print(f"[{time.strftime('%H:%M:%S')}] {label}: {step}/{total}", file=sys.stderr,
                  flush=True)
            if step == total:
                self._last.pop(label, None)


class RichProgress:
    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._progress = Progress("{task.description}", BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), console=Console(stderr=True),
                                  transient=False)
        self._tasks: dict[str, int] = {}
        self._started = False

    def __call__(self, label: str, step: int, total: int) -> None:
        if not self._started:
            self._progress.start()
            self._started = True
        if label not in self._tasks:
            self._tasks[label] = self._progress.add_task(label, total=total)
        self._progress.update(self._tasks[label], completed=step, total=total)
        if step >= total:
            self._tasks.pop(label)

    def __del__(self):
        if self._started:
            self._progress.stop()


class SweepClock:
    """Elapsed time and an ETA over the points of a sweep, from its throughput so far (points
    finished per second of wall time), which counts parallel workers and skipped points as
    they are: the estimate is as good as the points left resemble the points done."""

    def __init__(self, total: int, now: Callable[[], float] = time.monotonic):
        self.total, self._now, self._start, self._done = total, now, now(), 0

    def elapsed(self) -> float:
        return self._now() - self._start

    def done(self) -> str:
        """Count one more point finished; 'k of n done, elapsed ..., ETA ...'."""
        self._done += 1
        elapsed = self.elapsed()
        left = self.total - self._done
        eta = f", ETA {self.format(elapsed / self._done * left)}" if left else ""
        return f"{self._done} of {self.total} done, elapsed {self.format(elapsed)}{eta}"

    @staticmethod
    def format(seconds: float) -> str:
        if seconds < 60:
            return f"{seconds:.1f} s"
        minutes, secs = divmod(round(seconds), 60)
        if minutes < 60:
            return f"{minutes} min {secs:02d} s"
        return f"{minutes // 60} h {minutes % 60:02d} min"
