"""Benchmark outputs record the command that reproduces them, every option included."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402


def test_outputs_name_the_script_and_every_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "b2_latency.py"), "--trials", "5"])
    monkeypatch.setattr(common, "OUT_DIR", tmp_path)
    args = argparse.Namespace(trials=5, latency_fill=0.95, task="resnet")
    path = common.write_outputs("demo", pd.DataFrame({"a": [1]}), "summary text", args)
    text = path.read_text()
    assert "Command: `python benchmarks/b2_latency.py --trials 5 --latency-fill 0.95 --task resnet`" in text
    assert "summary text" in text and (tmp_path / "demo.csv").is_file()
    assert f"written: {path}" in capsys.readouterr().out
