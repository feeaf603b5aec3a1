"""Progress of long work (training, populations, sweeps): a tqdm bar on a terminal, else periodic
log lines with rate and ETA (files, `ray job logs`, Ray workers, CI)."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("pgen")


def on_terminal() -> bool:
    """Whether stderr is a terminal a person watches (then progress is a bar)."""
    return sys.stderr.isatty()


class _Handler(logging.StreamHandler):
    """Log lines that leave tqdm bars intact on a terminal (tqdm.write moves the bar below the line)."""

    def emit(self, record: logging.LogRecord) -> None:
        if not on_terminal():
            return super().emit(record)
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise (logging.Handler's own contract)
            self.handleError(record)


def setup_logging(level: int = logging.INFO) -> None:
    """One stderr handler for the `pgen` logger, with times; idempotent."""
    if not log.handlers:
        handler = _Handler(sys.stderr)
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
    """`label done/total | rate unit/s | extra | ETA`: a tqdm bar when stderr is a terminal and the
    total is known, else a log line at most every `every_s` seconds (and whenever `force`)."""

    def __init__(self, label: str, total: int | None, unit: str = "steps", every_s: float = 5.0, start: int = 0):
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.t0 = time.monotonic()
        self.start = start
        self.last_log = -float("inf")
        self.bar = None
        if total and on_terminal():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=label, unit=f" {unit}", file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.5, leave=True)

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
        if self.bar is not None:
            self.bar.n = done
            if extra:
                self.bar.set_postfix_str(extra, refresh=False)
            self.bar.refresh() if force else self.bar.update(0)
            if done >= self.total:
                self.bar.close()
            return
        now = time.monotonic()
        if force or now - self.last_log >= self.every_s:
            self.last_log = now
            log.info(self.line(done, extra))
