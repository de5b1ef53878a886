"""The package metadata promises no Python the code cannot run on."""

import ast
import sys

from packaging.specifiers import SpecifierSet

from tests.conftest import REPO

PACKAGES = ("calib",)
# standard-library modules newer than Python 3.10, with the version that added them
NEW_STDLIB = {"tomllib": (3, 11), "wsgiref.types": (3, 11)}


def _imported_modules() -> set[str]:
    names = set()
    for pkg in PACKAGES:
        for file in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text(), str(file))):
                if isinstance(node, ast.Import):
                    names |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module)
    return names


def test_requires_python_covers_the_stdlib_the_code_imports():
    import tomllib

    spec = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])
    needed = max([NEW_STDLIB[m] for m in _imported_modules() if m in NEW_STDLIB], default=(3, 10))
    assert "tomllib" in _imported_modules()  # calib/study/grid.py reads grids with it
    older = f"{needed[0]}.{needed[1] - 1}"
    assert older not in spec, f"requires-python {spec} admits Python {older}, which lacks a module the code imports"
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in spec
