"""Shared test setup: a private model cache per test session, and small helpers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Trained-model cache in a fresh folder, so tests never depend on a user's cache."""
    if "AUTOCOMPRESS_CACHE" not in os.environ or os.environ.get("AUTOCOMPRESS_TEST_KEEP_CACHE") != "1":
        os.environ["AUTOCOMPRESS_CACHE"] = tempfile.mkdtemp(prefix="autocompress-test-cache-")
    os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture
def write_file(tmp_path: Path):
    """Writes ``text`` to ``tmp_path / name`` and returns the path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write
