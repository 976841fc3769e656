"""Progress of a long loop, written to the job's log at a steady cadence.

Plain log lines (not a redrawn bar) so that ``tail -f logs/...`` reads like a timeline:
``extract ner: 40/120 batches (33 %), 5.1 batches/s, 2100 tokens/s, ETA 16 s``.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("finescope.progress")

# Seconds between two progress lines of the same loop.
EVERY_SECONDS = 20.0


def format_seconds(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Count work done and log ``done/total, rate, ETA`` at most every ``every`` seconds.

    ``update(n, tokens=…)`` adds ``n`` units (and optionally a second count, e.g. tokens, whose
    rate is shown too); ``extra`` keyword values (e.g. the current loss) go on the line as they
    are. The first and the last unit are always logged.
    """

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "item",
        *,
        every: float | None = None,
        initial: int = 0,
        enabled: bool = True,
        clock=time.monotonic,
    ) -> None:
        self.what, self.total, self.unit = what, int(total), unit
        self.units = unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")
        self.every = EVERY_SECONDS if every is None else float(every)
        self.enabled, self.clock = enabled, clock
        self.extra: dict = {}
        self.done = self.start_done = int(initial)
        self.counts: dict[str, float] = {}
        self.started = self.clock()
        self.last_logged: float | None = None

    def update(self, n: int = 1, extra: dict | None = None, **counts: float) -> None:
        self.done += n
        self.extra = dict(extra or {})
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0.0) + float(value)
        now = self.clock()
        due = self.last_logged is None or now - self.last_logged >= self.every
        if self.enabled and (due or self.done >= self.total):
            self.last_logged = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        new = self.done - self.start_done
        rate = new / elapsed
        parts = [f"{self.what}: {self.done}/{self.total} {self.units}"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f} %)"
        parts.append(f"{rate:.2f} {self.units}/s")
        parts += [f"{value / elapsed:.0f} {key}/s" for key, value in self.counts.items()]
        left = self.total - self.done
        if left > 0 and rate > 0:
            parts.append(f"ETA {format_seconds(left / rate)}")
        else:
            parts.append(f"took {format_seconds(elapsed)}")
        parts += [f"{key} {value}" for key, value in self.extra.items()]
        return ", ".join(parts)
