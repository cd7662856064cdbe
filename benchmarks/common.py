"""Shared helpers for the benchmarks: output folder, machine line, Markdown tables."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import pandas as pd

OUT_DIR = Path(__file__).resolve().parent / "out"


KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_int8")
"""CPU flags that change which kernels PyTorch and ONNX Runtime run."""


def machine() -> str:
    """One line describing this machine: CPU model and the flags that matter, cores, Python, torch."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    present = ", ".join(flag for flag in KERNEL_FLAGS if flag in flags) or "none of " + "/".join(KERNEL_FLAGS)
    try:
        import torch

        torch_version = f", torch {torch.__version__}"
    except ImportError:
        torch_version = ""
    return (f"{model} ({platform.machine()}; {present}), {os.cpu_count()} CPU cores, "
            f"Python {platform.python_version()}{torch_version}, {platform.system()}")


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run: the running script with every option, defaults included."""
    script = Path(sys.argv[0]).resolve().relative_to(Path(__file__).resolve().parents[1])
    options = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in vars(args).items())
    return f"python {script.as_posix()} {options}".strip()


def write_outputs(name: str, frame: pd.DataFrame, summary: str, args: argparse.Namespace) -> Path:
    """Writes ``out/<name>.csv`` and ``out/<name>.md`` (command, date, machine, tables), prints the summary and
    where it went, and returns the Markdown file."""
    OUT_DIR.mkdir(exist_ok=True)
    frame.to_csv(OUT_DIR / f"{name}.csv", index=False)
    text = f"Command: `{command_line(args)}`\nDate: {date.today()}\nMachine: {machine()}\n\n{summary}\n"
    path = OUT_DIR / f"{name}.md"
    path.write_text(text)
    print(summary)
    print(f"written: {path}")
    return path


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
