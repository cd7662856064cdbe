"""Run folders: refused before anything starts when they cannot be used, created only when a run begins."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path

from core.errors import UsageError
from core.paths import RESULTS_DIR
from search.config import SearchConfig

CONFIG_FILE = "config.yaml"
"""The run's configuration, in every run folder."""
_PROBE_PREFIX = ".write-probe-"


def check_writable(folder: Path, what: str) -> None:
    """Refuses a folder that cannot be created (or written, when it exists); leaves nothing behind.

    Probes the nearest existing folder on ``folder``'s path by creating and removing an empty folder
    in it, which catches read-only file systems, missing permissions and pseudo file systems alike.

    Raises:
        UsageError: naming ``what`` and the reason.
    """
    existing = folder.absolute()
    while not existing.exists() and not existing.is_symlink():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot create the {what} {folder}: {existing} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=_PROBE_PREFIX, dir=existing))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if existing == folder.absolute():
            raise UsageError(f"cannot write to the {what} {folder}: {reason}") from exc
        raise UsageError(f"cannot create the {what} {folder}: {reason} in {existing}") from exc


def check_out(out: Path | None) -> None:
    """Refuses an output folder that exists and is not empty (an earlier run is never touched), or that
    cannot be created; ``None`` checks the default place, results/.

    Raises:
        UsageError: naming the folder and the reason.
    """
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"output folder {out} already exists and is not empty; use --resume {out} or a new --out")
    check_writable(out if out is not None else RESULTS_DIR, "output folder" if out is not None else "results folder")


def new_run_dir(config: SearchConfig, out: Path | None) -> Path:
    """Creates a fresh run folder; never reuses a non-empty one.

    Raises:
        UsageError: when ``out`` exists and is not empty, or cannot be created.
    """
    if out is not None:
        check_out(out)
        out.mkdir(parents=True, exist_ok=True)
        return out
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = RESULTS_DIR / f"{stamp}-{config.task_label}-{config.searcher}"
    run_dir, suffix = base, 1
    while run_dir.exists():
        suffix += 1
        run_dir = base.with_name(f"{base.name}-{suffix}")
    run_dir.mkdir(parents=True)
    return run_dir
