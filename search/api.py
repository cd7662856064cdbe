"""The Python API: the same power as the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.errors import UsageError
from search.config import SearchConfig, build_config, read_config_file
from search.devices import DevicesOutcome, run_devices
from search.drivers import driver_for
from search.prepared import prepare
from search.run_folder import CONFIG_FILE, check_out, check_writable, new_run_dir
from search.runner import RunOutcome, run

RESUME_SETTINGS = frozenset({"trials", "ray_address"})
"""Settings a resumed run may change: the trial total, and where its Ray cluster is."""


def resume_config(run_dir: Path, trials: int | None = None, ray_address: str | None = None) -> SearchConfig:
    """The configuration saved in ``run_dir``, with an optional new trial total (or Ray cluster address).

    Raises:
        UsageError: when ``run_dir`` holds no run, or its driver refuses the new trial total.
    """
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a run folder (no {CONFIG_FILE}); pass the folder of an earlier run")
    saved = build_config(read_config_file(path))
    driver_for(saved).check_resume(saved, trials)
    return build_config({"trials": trials, "ray_address": ray_address}, saved)


def run_search(
    config: SearchConfig | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = False,
    **settings: Any,
) -> RunOutcome | DevicesOutcome:
    """Runs a compression search and returns its outcome (a :class:`DevicesOutcome` with ``devices``).

    Args:
        config: a full configuration; ``settings`` (SearchConfig fields) update it.
        out: new run folder (default: a fresh folder under results/).
        resume: folder of an interrupted run to continue (its own config is used;
            only ``trials`` and ``ray_address`` may be changed).
        progress: show progress bars on stderr.
        **settings: SearchConfig fields, e.g. ``task="lenet5", budget_mb="50KB", trials=30``.

    Raises:
        UsageError: for bad input, including a run folder that cannot be created or written;
            nothing is written in that case.
    """
    if resume is not None:
        extra = set(settings) - RESUME_SETTINGS
        if config is not None or extra or out is not None:
            raise UsageError("a resumed run uses its own config.yaml; only the trial count may change")
        run_dir = Path(resume)
        config = resume_config(run_dir, settings.get("trials"), settings.get("ray_address"))
        check_writable(run_dir, "run folder")
        with driver_for(config).session(config):
            if config.devices:
                return run_devices(config, resume=run_dir, progress=progress)
            return run(prepare(config, progress), run_dir, progress)
    config = build_config(settings, config)
    out_dir = Path(out) if out is not None else None
    check_out(out_dir)
    with driver_for(config).session(config):
        if config.devices:
            return run_devices(config, out=out_dir, progress=progress)
        prepared = prepare(config, progress)
        run_dir = new_run_dir(config, out_dir)
        return run(prepared, run_dir, progress)
