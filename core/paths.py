"""Where the project keeps its configs and results."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
DEVICES_DIR = CONFIG_DIR / "devices"
RESULTS_DIR = PROJECT_ROOT / "results"

