"""The layout: every import between pgen's layers goes down, none goes round, and nothing outside
the generator package asks which kind a generator is.

The layers, bottom to top (README "Architecture", docs/design.md "Layout"): a module may import its
own package (without a cycle) and packages of lower layers, never one of its own layer or above.
Imports inside functions count the same as those at the top of a module.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    ("pgen.config", "pgen.conf", "pgen.util"),  # config schemas; file writes, progress, plots, Ray start
    ("pgen.store",),  # the checkpoint store (local or S3): every layer above reads or writes it
    ("pgen.envs",),  # PettingZoo envs, agent groups, vector backends
    ("pgen.policies",),  # PolicySpec / ParamLayout, networks, the policy file, growth, rollouts
    ("pgen.learner",),  # MAPPO / IPPO, trainer state
    ("pgen.population",),  # population members (Ray actors)
    ("pgen.dataset",),  # slices of checkpoint records, reference policies, seed runs
    ("pgen.generator",),  # the machine learning: kinds, models, fit, sampling, versions
    ("pgen.evaluation",),  # metrics, baselines, evaluation, calibration by play, selection, the gate
    ("pgen.commands",),  # one module per command of the library
    ("serve", "tune"),  # the Serve application, the Tune sweep
    ("loop",),  # `pgen loop`: deploys serve/
    ("pgen.cli",),  # the console script: dispatches to every command
]
PACKAGES = ("pgen", "serve", "tune", "loop")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if "pgen_pb2" not in p.name}


def _layer(module: str) -> tuple[int, str]:
    """(rank, unit) of a module: its layer and the package within the layer it belongs to."""
    for rank, units in enumerate(LAYERS):
        for unit in units:
            if module == unit or module.startswith(unit + "."):
                return rank, unit
    if module == "pgen":
        return -1, "pgen"
    raise AssertionError(f"module {module} is in no layer of tests/test_layout.py: add it to LAYERS")


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports, anywhere in it (TYPE_CHECKING and function bodies included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    from pgen.cli import COMMANDS  # the dispatcher imports its commands by name

    graph["pgen.cli"] |= {target.split(":")[0] for target in COMMANDS.values()}
    return graph


def test_every_import_goes_down_a_layer_or_stays_in_its_package():
    upward = []
    for module, targets in sorted(import_graph().items()):
        rank, unit = _layer(module)
        for target in sorted(targets):
            t_rank, t_unit = _layer(target)
            if t_rank > rank or (t_rank == rank and t_unit != unit):
                upward.append(f"{module} imports {target}")
    assert not upward, "imports that do not go down a layer:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the stack, 2 done
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state[nxt] == 1:
                cycles.append(" → ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack else f"{node} → {nxt}")
            elif state[nxt] == 0:
                visit(nxt, stack + [node])
        state[node] = 2

    for module in sorted(graph):
        if state[module] == 0:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


# what asking a generator's kind looks like: an isinstance check on a kind's class, a comparison of
# the generator config's kind, a version's `model.type`, a family-only key's presence, the kind
# registry's lookup of a version
KIND_QUESTIONS = re.compile(r"isinstance\([^)]*\b(FamilyGenerator|SingleArchGenerator|FamilyNormalizer|Normalizer)\b"
                            r"|\b(generator|gen_cfg)\.kind\s*(==|!=|in\b)|\[\"model\"\](\[\"type\"\]|\.get\(\"type\"\))"
                            r"|[\"']archs[\"'] in |(?<!pgen\.)\bgenerator\.family\b(?!\.)|\bMODEL_TYPE\b|\bmodel_type\b|\bkind_of\(")


def test_nothing_outside_the_generator_package_asks_which_kind_a_generator_is():
    asked = []
    files = [p for pkg in (*PACKAGES, "bench") for p in (ROOT / pkg).rglob("*.py")]
    for path in files:
        if path.is_relative_to(ROOT / "pgen" / "generator") or path.name.startswith("pgen_pb2"):
            continue
        if path == ROOT / "pgen" / "config.py":  # the schemas: the `generator` group's options and the
            continue  # former `generator.family=true` override of one, not a question about a generator
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if KIND_QUESTIONS.search(line):
                asked.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not asked, "places outside pgen/generator/ that branch on a generator's kind:\n" + "\n".join(asked)
