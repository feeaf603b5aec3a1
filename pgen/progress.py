"""Periodic progress lines with rate and ETA for long work (training, populations, sweeps)."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("pgen")


def setup_logging(level: int = logging.INFO) -> None:
    """One stderr handler for the `pgen` logger, with times; idempotent."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level)


def format_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """Logs `label done/total (pct) | rate unit/s | extra | ETA` at most every `every_s` seconds."""

    def __init__(self, label: str, total: int | None, unit: str = "steps", every_s: float = 5.0, start: int = 0):
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.t0 = time.monotonic()
        self.start = start
        self.last_log = -float("inf")

    def rate(self, done: int) -> float:
        elapsed = time.monotonic() - self.t0
        return (done - self.start) / elapsed if elapsed > 0 else 0.0

    def line(self, done: int, extra: str = "") -> str:
        rate = self.rate(done)
        parts = [f"{self.label} {done:,}" + (f"/{self.total:,} ({100 * done / self.total:.1f}%)" if self.total else "")]
        parts.append(f"{rate:,.0f} {self.unit}/s" if rate >= 10 else f"{rate:.2g} {self.unit}/s")
        if extra:
            parts.append(extra)
        if self.total:
            parts.append(f"ETA {format_duration((self.total - done) / rate if rate > 0 else float('inf'))}")
        return " | ".join(parts)

    def update(self, done: int, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_log >= self.every_s:
            self.last_log = now
            log.info(self.line(done, extra))
