"""How the code base is laid out: short functions, scripts that import no script, nothing outside the repository."""

import ast
import re

import pytest

from conftest import ROOT, SPACES

MAX_FUNCTION_LINES = 70


def _python_files():
    return sorted(p for folder in SPACES.values() for p in folder.glob("*.py"))


def _is_training_script(path):
    # train.py, train_search.py, ... and bench.py; benchmark.py and plot_trajectory.py are
    # modules with a command line of their own, which the searches use as modules.
    return path.stem in ("bench", "train") or path.stem.startswith("train_")


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_function_is_longer_than_70_lines(path):
    """Every function and method fits on about a screen."""
    tree = ast.parse(path.read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: {', '.join(long)}"


@pytest.mark.parametrize("space", sorted(SPACES))
def test_no_script_imports_another_script(space):
    """Training scripts and bench.py share code through modules (engine, search, training), not each other."""
    scripts = {p.stem for p in SPACES[space].glob("*.py") if _is_training_script(p)}
    for path in SPACES[space].glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        assert not (imported & scripts) - {path.stem}, f"{space}/{path.name} imports {imported & scripts}"


def test_nothing_refers_to_files_outside_the_repository():
    """A user's clone stands alone: relative paths stay inside it, and every note it names is in it."""
    files = [
        p
        for p in ROOT.rglob("*")
        if p.is_file()
        and p.suffix in (".py", ".md", ".txt", ".toml", "")
        and not {".git", "experiments", "__pycache__"} & set(p.parts)
    ]
    notes = {p.name for p in ROOT.rglob("*.md") if ".git" not in p.parts}
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for relative in re.findall(r"(?:\.\./)+[\w.-]+", text):
            # Scripts run from their own folder, so relative paths start there: the file's folder,
            # or a script folder for the top-level files (the README's commands run from one).
            base = SPACES["201-space"] if path.parent == ROOT else path.parent
            target = (base / relative).resolve()
            assert target.is_relative_to(ROOT), f"{path.relative_to(ROOT)} points outside the repository: {relative}"
        for note in re.findall(r"\b[\w-]+\.md\b", text):
            assert note in notes, f"{path.relative_to(ROOT)} names {note}, which the repository does not hold"
