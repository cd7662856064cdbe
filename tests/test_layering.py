"""The architecture rules of pyproject.toml's ``[tool.importlinter]``, checked by import-linter.

Layers run ``search`` > ``envs`` > ``methods`` > ``core``; nothing imports upwards, ``core`` imports no
heavy library, and no package has an import cycle (imports inside functions count).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "methods", "envs", "search")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
         "sys.exit(lint_imports_command())", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )


def _copy_tree(dest: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_project_keeps_every_import_contract() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("methods/pruning.py", "from search.runner import run  # noqa", "Layers"),
        ("envs/evaluator.py", "import search.config  # noqa", "Layers"),
        ("core/policy.py", "import torch  # noqa", "core imports no heavy library"),
        ("methods/quantization.py", "def _late() -> None:\n    from methods import pipeline  # noqa\n",
         "No import cycles"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    """Each rule really fails on a scratch copy of the tree with one offending import added."""
    root = _copy_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text() + "\n" + line + "\n")
    result = _lint(root)
    assert result.returncode != 0, result.stdout
    broken = [ln for ln in result.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), result.stdout
