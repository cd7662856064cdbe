"""Where the project keeps its configs, results and caches."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
DEVICES_DIR = CONFIG_DIR / "devices"
RESULTS_DIR = PROJECT_ROOT / "results"
CACHE_ENV = "AUTOCOMPRESS_CACHE"
"""Environment variable overriding the cache directory (trained weights, device profiles, latency tables)."""


def default_cache_dir() -> Path:
    """``$AUTOCOMPRESS_CACHE`` if set, else ``~/.cache/autocompress``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autocompress"
