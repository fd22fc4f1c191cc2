"""How the code base is laid out: short functions, scripts that import no script, nothing outside the repository."""

import ast
import re

import pytest

from conftest import ROOT, SPACES

MAX_FUNCTION_LINES = 70  # about a screen
MAX_LOOP_LINES = 110  # a search's or a training's epoch loop, read top to bottom as one piece
# A preset script imports the script it presets; bench.py times the scripts' own steps.
BASE_SCRIPTS = {
    "train_search_progressive": {"train_search"}, "train_search_imagenet": {"train_search"},
    "train_imagenet": {"train"}, "bench": {"train_search", "train"},
}  # fmt: skip
MAX_TOP_LEVEL_FILES = 16


def _python_files():
    return sorted(p for folder in SPACES.values() for p in [*folder.glob("*.py"), *folder.glob("runkit/*.py")])


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_fit_a_screen_and_an_epoch_loop_reads_as_one_piece(path):
    text, long = path.read_text(), []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines, is_loop = node.end_lineno - node.lineno + 1, "run.epochs(" in ast.get_source_segment(text, node)
            if lines > (MAX_LOOP_LINES if is_loop else MAX_FUNCTION_LINES):
                long.append(f"{node.name} ({lines} lines)")
    assert not long, f"{path.name}: {', '.join(long)}"


@pytest.mark.parametrize("space", sorted(SPACES))
def test_a_script_imports_no_script_but_the_one_it_presets(space):
    """Scripts share code through modules; a preset (train_search_progressive.py, ...) imports its base script."""
    scripts = {p.stem for p in SPACES[space].glob("*.py") if re.match(r"bench$|train$|train_", p.stem)}
    for path in SPACES[space].glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        others = (imported & scripts) - {path.stem} - BASE_SCRIPTS.get(path.stem, set())
        assert not others, f"{space}/{path.name} imports {others}"


@pytest.mark.parametrize("space", sorted(SPACES))
def test_the_top_level_shows_the_method_and_the_tools_the_machinery_is_in_runkit(space):
    files = sorted(p.name for p in SPACES[space].iterdir() if p.is_file() and p.suffix == ".py")
    assert len(files) <= MAX_TOP_LEVEL_FILES, files
    for name in ("operations.py", "model_search.py", "architect.py", "genotypes.py", "model.py", "train_search.py"):
        assert name in files


def test_nothing_refers_to_files_outside_the_repository():
    """A user's clone stands alone: relative paths stay inside it, and every note it names is in it."""
    files = [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".txt", ".toml", "")]
    files = [p for p in files if not {".git", "experiments", "__pycache__"} & set(p.parts)]
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
