"""The Python API: the same power as the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from search.config import SearchConfig, build_config, read_config_file
from search.errors import UsageError
from search.runner import CONFIG_FILE, RunOutcome, check_out, new_run_dir, prepare, run


def resume_config(run_dir: Path, trials: int | None = None) -> SearchConfig:
    """The configuration saved in ``run_dir``, with an optional new trial total.

    Raises:
        UsageError: when ``run_dir`` holds no run.
    """
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a run folder (no {CONFIG_FILE}); pass the folder of an earlier run")
    return build_config({"trials": trials}, build_config(read_config_file(path)))


def run_search(
    config: SearchConfig | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = False,
    **settings: Any,
) -> RunOutcome:
    """Runs a compression search and returns its outcome.

    Args:
        config: a full configuration; ``settings`` (SearchConfig fields) update it.
        out: new run folder (default: a fresh folder under results/).
        resume: folder of an interrupted run to continue (its own config is used;
            only ``trials`` may be changed).
        progress: show progress bars on stderr.
        **settings: SearchConfig fields, e.g. ``task="lenet5", budget_mb="50KB", trials=30``.

    Raises:
        UsageError: for bad input; nothing is written in that case.
    """
    if resume is not None:
        extra = set(settings) - {"trials"}
        if config is not None or extra or out is not None:
            raise UsageError("a resumed run uses its own config.yaml; only the trial count may change")
        run_dir = Path(resume)
        config = resume_config(run_dir, settings.get("trials"))
        return run(prepare(config, progress), run_dir, progress)
    config = build_config(settings, config)
    check_out(Path(out) if out is not None else None)
    prepared = prepare(config, progress)
    run_dir = new_run_dir(config, Path(out) if out is not None else None)
    return run(prepared, run_dir, progress)
