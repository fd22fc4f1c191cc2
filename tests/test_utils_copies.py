"""The run machinery, `runkit/`, is one package kept identical in both folders, and it imports nothing of the method."""

import ast

import pytest

from conftest import SPACES

KIT = {space: sorted(p.name for p in (folder / "runkit").glob("*.py")) for space, folder in SPACES.items()}
METHOD = {p.stem for folder in SPACES.values() for p in folder.glob("*.py")}


def test_both_folders_hold_the_same_runkit_files():
    assert KIT["201-space"] == KIT["DARTS-space"]


@pytest.mark.parametrize("name", KIT["201-space"])
def test_runkit_files_are_identical_in_both_folders_and_import_no_method_module(name):
    first, second = (SPACES[space] / "runkit" / name for space in ("201-space", "DARTS-space"))
    assert first.read_text() == second.read_text(), f"edit 201-space/runkit/{name} and copy it to DARTS-space/runkit/"
    imported = set()
    for node in ast.walk(ast.parse(first.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & METHOD, f"runkit/{name} imports {imported & METHOD}: pass what it needs in instead"
