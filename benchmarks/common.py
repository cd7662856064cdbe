"""Shared helpers for the benchmarks: output folder, machine line, Markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import pandas as pd

OUT_DIR = Path(__file__).resolve().parent / "out"


def machine() -> str:
    """One line describing this machine."""
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, {platform.system()}"


def write_outputs(name: str, frame: pd.DataFrame, summary: str, command: str) -> Path:
    """Writes ``out/<name>.csv`` and ``out/<name>.md`` (command, date, machine, tables)."""
    OUT_DIR.mkdir(exist_ok=True)
    frame.to_csv(OUT_DIR / f"{name}.csv", index=False)
    text = f"Command: `{command}`\nDate: {date.today()}\nMachine: {machine()}\n\n{summary}\n"
    (OUT_DIR / f"{name}.md").write_text(text)
    return OUT_DIR / f"{name}.md"


def markdown_table(frame: pd.DataFrame) -> str:
    """A Markdown table of ``frame`` (floats to 4 significant digits)."""

    def cell(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))
