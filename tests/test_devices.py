"""--devices without Ray: one run sub-folder (and Pareto set) per device profile, and a summary table."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search import run_search
from search.devices import DevicesOutcome

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_devices_loop_gives_each_device_its_own_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    settings = {"model": f"{ROOT / 'tests/fixtures/user_mlp.py'}:build", "searcher": "random", "trials": 3,
                "devices": ["cpu-b1", "cpu-b32"], "export": {"finetune_epochs": 0.05, "max_models": 2}}
    outcome = run_search(out=run, **settings)
    assert isinstance(outcome, DevicesOutcome) and outcome.run_dir == run
    assert list(outcome.outcomes) == ["cpu-b1", "cpu-b32"]
    assert yaml.safe_load((run / "config.yaml").read_text())["devices"] == ["cpu-b1", "cpu-b32"]
    summary = (run / "summary.md").read_text()
    for device in ("cpu-b1", "cpu-b32"):
        assert f"| {device} |" in summary
        assert yaml.safe_load((run / device / "config.yaml").read_text())["device"] == device
        assert len(outcome.outcomes[device].trials) == 3 and (run / device / "pareto.csv").is_file()
    resumed = run_search(resume=run)
    assert isinstance(resumed, DevicesOutcome)
    assert [len(o.trials) for o in resumed.outcomes.values()] == [3, 3]
