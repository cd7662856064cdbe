"""Per-device tuning: one Pareto set per device profile, one run sub-folder each, and a summary table."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from core.metric import ACCURACY
from envs.device import load_device
from search.config import SearchConfig
from search.prepared import prepare
from search.run_folder import CONFIG_FILE, new_run_dir
from search.runner import RunOutcome, run

SUMMARY_FILE = "summary.md"
"""The per-device table in the parent run folder."""


@dataclass
class DevicesOutcome:
    """What a ``--devices`` run produced."""

    run_dir: Path
    """The parent run folder (``config.yaml``, ``summary.md`` and one sub-folder per device)."""
    outcomes: dict[str, RunOutcome]
    """Each device's run, by device name."""


def device_config(config: SearchConfig, device: str) -> SearchConfig:
    """The single-device configuration of one device of a ``--devices`` run."""
    return replace(config, device=device, devices=())


def summary_table(outcomes: dict[str, RunOutcome]) -> str:
    """Markdown: per device, the best-scoring exported model (all are within budget), its size and latency."""
    first = next(iter(outcomes.values()), None)
    metric = first.baseline.metric if first is not None else ACCURACY
    header = ["device", "Ray resource", "trials", "within budget", "Pareto models", f"best test {metric.name}", "size",
              "latency (ms)", "folder"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, outcome in outcomes.items():
        resource = load_device(name).ray_resource or "-"
        feasible = sum(t.feasible for t in outcome.trials)
        cells = [name, resource, str(len(outcome.trials)), str(feasible), str(len(outcome.models))]
        if outcome.models:
            best = max(outcome.models, key=lambda m: (m.test_accuracy, -m.size_bytes))
            cells += [f"{metric.value(best.test_accuracy):.4f}", f"{best.size_bytes / 1e3:.1f} KB",
                      f"{best.latency_ms:.2f}"]
        else:
            cells += ["no model met the budget", "-", "-"]
        cells.append(outcome.run_dir.name)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_devices(
    config: SearchConfig, *, resume: Path | None = None, out: Path | None = None, progress: bool = True
) -> DevicesOutcome:
    """Runs the search of every device of ``config.devices`` in ``<run>/<device>/``.

    Args:
        config: the run's configuration (with ``devices``).
        resume: the folder of an interrupted ``--devices`` run: finished devices are re-exported,
            interrupted ones resumed, missing ones started.
        out: new run folder (default: a fresh folder under results/); ignored with ``resume``.
        progress: show progress bars.

    Every device is prepared before anything is written, so bad input leaves no folder behind.

    Raises:
        UsageError: for bad input (nothing is written then).
    """
    prepared = {name: prepare(device_config(config, name), progress) for name in config.devices}
    run_dir = resume if resume is not None else new_run_dir(config, out)
    (run_dir / CONFIG_FILE).write_text(config.to_yaml())
    outcomes = {}
    for name, device_prepared in prepared.items():
        device_dir = run_dir / name
        device_dir.mkdir(exist_ok=True)
        outcomes[name] = run(device_prepared, device_dir, progress)
    (run_dir / SUMMARY_FILE).write_text(f"# Per-device summary\n\n{summary_table(outcomes)}\n")
    return DevicesOutcome(run_dir, outcomes)
