"""The layers import downwards only (core, generators, study, CLI), checked by import-linter's own contracts."""

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_import_linter_contracts_are_kept():
    lint = shutil.which("lint-imports") or pytest.fail("import-linter is a dev dependency: pip install -e '.[dev]'")
    result = subprocess.run([lint, "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_core_loads_the_generators_only_when_a_source_is_looked_up():
    code = ("import sys; import calib.core.sources as s; assert 'calib.distylegan' not in sys.modules; "
            "assert 'distylegan' in s.list_sources(); assert 'calib.distylegan.sources' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
