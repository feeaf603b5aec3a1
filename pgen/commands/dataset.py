"""`pgen dataset`: what is in a store — counts per env/group/arch/run, return range and histogram,
bad rows (`pgen.dataset.summary`)."""

from __future__ import annotations

from pgen.config import DatasetConfig
from pgen.dataset.summary import format_summary, summarise


def main(cfg: DatasetConfig) -> None:
    print(format_summary(summarise(cfg)))
