"""tests/conftest.py: with VEGAN_STRICT_SKIPS=1 (`make test`) a skip fails the run and says why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SUITE = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("widget not installed")

@pytest.fixture
def needs_widget():
    pytest.skip("fixture cannot find the widget")

def test_fixture_skips(needs_widget):
    pass

@pytest.mark.xfail(reason="known bug", strict=True)
def test_known_bug():
    assert False
"""


def _pytest(folder: Path, strict: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VEGAN_STRICT_SKIPS"}
    if strict:
        env["VEGAN_STRICT_SKIPS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(folder)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_skips_fail_only_in_strict_mode(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "test_module_skip.py").write_text('import pytest\npytest.importorskip("no_such_module_xyz")\n')

    relaxed = _pytest(tmp_path, strict=False)
    assert relaxed.returncode == 0, relaxed.stdout
    assert "1 passed, 3 skipped, 1 xfailed" in relaxed.stdout

    strict = _pytest(tmp_path, strict=True)
    out = strict.stdout
    assert strict.returncode == 1, out
    assert "VEGAN_STRICT_SKIPS=1 requires every test to run: Skipped: widget not installed" in out
    assert "requires every test to run: Skipped: fixture cannot find the widget" in out
    assert "module skipped) test_module_skip.py" in out and "no_such_module_xyz" in out
    assert "1 failed, 1 passed" in out and "1 xfailed" in out  # an expected failure stays expected
