"""The docs name what exists: every path, module and command that README.md and docs/ mention, and
README's figures, which are rows of bench/README.md's table of current figures."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from pgen.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "cluster" / "README.md"]
# what a user's own run creates, placeholders and remote locations: not files of the repository
NOT_REPOSITORY = re.compile(r"^(pgen-store|pgen-runs|generated-|outputs/|/|~|s3://|file://|https?://|\.\./)|[<>*{}$]")
PATH = re.compile(r"^[\w.\-]+(/[\w.\-]+)*/?$")
TOP = ("pgen", "serve", "tune", "loop", "bench", "tests", "cluster", "docs", ".ci")


def _spans(text: str) -> list[str]:
    """The inline code spans of a markdown text (fenced blocks excluded)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.findall(r"`([^`\n]+)`", text)


def _code_lines(text: str) -> list[str]:
    """The lines of the fenced code blocks of a markdown text."""
    return [line for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S) for line in block.splitlines()]


def _paths(doc: Path) -> list[Path]:
    """Repository paths a doc names: code spans that are paths under a top-level folder of the
    repository (or a file at its root), and relative markdown links."""
    text = doc.read_text()
    out = [ROOT / s for s in _spans(text) if PATH.match(s) and not NOT_REPOSITORY.search(s)
           and (s.split("/")[0] in TOP and "/" in s or (ROOT / s).is_file())]
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"^[a-z]+://", target):
            out.append((doc.parent / target).resolve())
    return out


def _modules(doc: Path) -> list[str]:
    """Dotted names of pgen's packages a doc names (`pgen.generator.fit`, `serve.app.build` ...)."""
    return [s for s in _spans(doc.read_text()) if re.fullmatch(r"(pgen|serve|tune|loop)(\.\w+)+", s)]


def _missing_module(name: str) -> bool:
    """Whether a dotted name is not an importable module or an object of one. Under `serve.`,
    `tune.` and `loop.`, a name of which only the top package imports is a config key (`serve.port`)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):  # the longest prefix that is a module, then attributes
        module = ".".join(parts[:i])
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            continue
        if i == 1:
            return parts[0] == "pgen"
        obj = importlib.import_module(module)
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return True
        return False
    return True


def _commands(doc: Path) -> list[str]:
    """The `pgen <command>`s a doc names in code spans and code blocks."""
    text = doc.read_text()
    found = [m for s in _spans(text) for m in re.findall(r"(?:^|\s)pgen ([a-z][a-z-]*)", s)]
    found += [m for line in _code_lines(text) for m in re.findall(r"(?:^|[\s&|;(])pgen ([a-z][a-z-]*)", line)]
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_module_and_command_a_doc_names_exists(doc):
    missing = [str(p) for p in _paths(doc) if not p.exists()]
    assert not missing, f"{doc.relative_to(ROOT)} names paths that do not exist: {missing}"
    bad = [name for name in _modules(doc) if _missing_module(name)]
    assert not bad, f"{doc.relative_to(ROOT)} names modules or objects that do not exist: {bad}"
    unknown = sorted(set(_commands(doc)) - set(COMMANDS))
    assert not unknown, f"{doc.relative_to(ROOT)} names pgen commands that do not exist: {unknown}"


def test_the_doc_checks_catch_what_does_not_exist(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("See `pgen/nothing.py`, `pgen.generator.no_such_module`, `pgen.generator.fit.nothing`, `pgen frobnicate`"
                   " and [a](nowhere.md); `pgen-store/checkpoints/`, `config.json` and `serve.port` are not files or"
                   " modules of the repository.\n```bash\npgen train-generator\n```\n")
    assert [p for p in _paths(doc) if not p.exists()] == [ROOT / "pgen/nothing.py", tmp_path / "nowhere.md"]
    assert [m for m in _modules(doc) if _missing_module(m)] == ["pgen.generator.no_such_module",
                                                                  "pgen.generator.fit.nothing"]
    assert not _missing_module("pgen.generator.fit.fit") and not _missing_module("serve.port")
    assert _commands(doc) == ["frobnicate", "train-generator"]


def _table(text: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first markdown table after `heading`."""
    section = text.split(heading, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # without the header and its rule


def test_readme_is_a_front_door_and_its_figures_are_bench_readmes_current_ones():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250, "README.md is the front door: reference goes to docs/"
    bench = (ROOT / "bench" / "README.md").read_text()
    assert bench.splitlines()[0] == "# Benchmarks"
    assert bench.index("## Current figures") < bench.index("\n## ", bench.index("## Current figures") + 1)
    current = {row[0]: row[1] for row in _table(bench, "## Current figures")}
    assert current, "bench/README.md has no table of current figures"
    shown = _table(readme, "## Figures")
    assert shown, "README.md has no figures table"
    wrong = [row for row in shown if current.get(row[0]) != row[1]]
    assert not wrong, f"README figures that are not bench/README.md's current ones: {wrong}"
