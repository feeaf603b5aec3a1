"""`pgen evaluate`: a registered generator over a grid of target returns against the baselines;
prints the table and writes `evaluation.json` and `alignment.png` (`pgen.evaluation`)."""

from __future__ import annotations

from pgen.config import EvaluateConfig
from pgen.evaluation.evaluate import evaluate_generator
from pgen.evaluation.report import format_result


def main(cfg: EvaluateConfig) -> None:
    print(format_result(evaluate_generator(cfg)))
