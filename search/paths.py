"""Where the project keeps its configs, results and caches."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
DEVICES_DIR = CONFIG_DIR / "devices"
RESULTS_DIR = PROJECT_ROOT / "results"


def cache_dir() -> Path:
    """Cache for trained models and device data: ``$AUTOCOMPRESS_CACHE`` or ``~/.cache/autocompress``."""
    env = os.environ.get("AUTOCOMPRESS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "autocompress"
