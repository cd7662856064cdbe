"""The ray searcher's pieces that need no cluster: options, config, CLI errors, ledger, quota, searcher."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.errors import UsageError
from core.space import SearchSpace, SpaceSettings
from search.cli import main
from search.config import build_config
from search.distributed.options import RayOptions, fidelity_steps, parse_address


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--searcher", "ray", "--workers", "0"], "workers must be a positive integer"),
        (["--workers", "2"], "need --searcher ray"),
        (["--ray-address", "127.0.0.1:6379"], "need --searcher ray"),
        (["--searcher", "ray", "--ray-address", "head"], "HOST:PORT"),
        (["--searcher", "ray", "--ray-address", "ray://head:10001"], "HOST:PORT"),
        (["--searcher", "ray", "--ray-address", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
        (["--devices", "cpu-b1,tpu"], "unknown device 'tpu'"),
        (["--devices", "cpu-b1,cpu-b1"], "twice"),
        (["--device", "cpu-b1", "--devices", "cpu-b32"], "either --device or --devices"),
    ],
)
def test_bad_distribution_input_is_one_line_and_writes_nothing(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert needle in _error([*argv, "--task", "lenet300", "--out", str(out)], capsys)
    assert not out.exists()


def test_bad_ray_options_are_usage_errors(write_file, capsys: pytest.CaptureFixture[str]) -> None:
    for options, needle in (({"sampler": "cmaes"}, "sampler"), ({"max_failures": -1}, "max_failures"),
                            ({"threads_per_trial": 0}, "threads_per_trial"), ({"colour": 1}, "colour")):
        config = write_file("c.yaml", yaml.safe_dump({"searcher": "ray", "searcher_options": options}))
        assert needle in _error(["--config", str(config)], capsys)


def test_ray_run_resumes_with_its_own_trial_total(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(build_config({"searcher": "ray", "trials": 8}).to_yaml())
    assert "own trial total (8)" in _error(["--resume", str(run), "--trials", "20"], capsys)


def test_config_round_trips_the_distribution_settings() -> None:
    config = build_config({"searcher": "ray", "workers": 3, "ray_address": "10.0.0.5:6379",
                           "devices": "cpu-b1, cpu-b32", "searcher_options": {"sampler": "nsga2"}})
    assert config.devices == ("cpu-b1", "cpu-b32")
    data = yaml.safe_load(config.to_yaml())
    assert data["devices"] == ["cpu-b1", "cpu-b32"] and data["workers"] == 3 and data["ray_address"] == "10.0.0.5:6379"
    assert build_config(data) == config
    assert config.searcher_settings == RayOptions(sampler="nsga2")


def test_fidelity_steps_are_ashas_milestones() -> None:
    assert fidelity_steps(0, RayOptions()) == (0,)
    assert fidelity_steps(40, RayOptions()) == (10, 20, 40)
    assert fidelity_steps(30, RayOptions(rungs=3, reduction_factor=3)) == (3, 9, 27, 30)
    assert fidelity_steps(40, RayOptions(scheduler="fifo")) == (40,)
    assert fidelity_steps(40, RayOptions(rungs=1)) == (40,)


def test_parse_address() -> None:
    assert parse_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert parse_address("head-node:6379") == ("head-node", 6379)
    assert parse_address("auto") is None
    for bad in ("head", "head:0", "head:70000", "ray://head:10001", ""):
        with pytest.raises(ValueError):
            parse_address(bad)
    with pytest.raises(UsageError):
        build_config({"searcher": "ray", "ray_address": "nowhere"})


def test_ledger_drops_lines_whose_row_never_reached_trials_csv(tmp_path: Path) -> None:
    from search.distributed.recorder import LEDGER_FILE, TrialLedger, TrialQuota

    path = tmp_path / LEDGER_FILE
    ledger = TrialLedger(path, rows=0)
    for row, trial_id in enumerate(("a", "b", "c")):
        ledger.add({"row": row, "trial_id": trial_id, "status": "ok"})
    path.write_text(path.read_text() + "3,d,o")  # a line torn by a kill
    assert TrialQuota(str(tmp_path), 10).recorded() == 3
    reopened = TrialLedger(path, rows=2)  # the driver died before row 2 reached trials.csv
    assert "b" in reopened and "c" not in reopened and "d" not in reopened
    assert TrialQuota(str(tmp_path), 10).recorded() == 2


def test_searcher_marks_budgets_as_constraints_prunes_early_stops_and_respects_the_quota(tmp_path: Path) -> None:
    from optuna.trial import TrialState
    from ray.tune.search import Searcher

    from core.policy import Policy
    from search.distributed.optuna_adapter import make_searcher
    from search.distributed.recorder import LEDGER_FILE, TrialQuota
    from search.distributed.trial import POLICY_KEY

    space = SearchSpace(("fc1", "fc2"), ("fc1",), SpaceSettings())
    searcher = make_searcher(space, RayOptions(), seed=0, concurrent=True, quota=TrialQuota(str(tmp_path), 3))
    configs = [searcher.suggest(trial_id) for trial_id in ("t0", "t1", "t2")]
    assert all(Policy.from_json(c[POLICY_KEY]).digest() for c in configs)
    assert searcher.suggest("t3") is None  # three unfinished trials already fill the total of 3
    base = {"size_bytes": 10, "latency_ms": 1.0, "finetune_steps": 4}
    searcher.on_trial_complete("t0", {**base, "val_accuracy": 0.9, "final": True, "size_excess": 0.5,
                                      "latency_excess": -0.2})
    searcher.on_trial_complete("t1", {**base, "val_accuracy": 0.3, "final": False, "size_excess": 0.0,
                                      "latency_excess": 0.0})
    searcher.on_trial_complete("t2", error=True)
    trials = {t.number: t for t in searcher._ot_study.get_trials(deepcopy=False)}
    assert trials[0].state == TrialState.COMPLETE and trials[0].constraints == {"size": 0.5, "latency": -0.2}
    assert trials[1].state == TrialState.PRUNED and trials[2].state == TrialState.FAIL
    assert searcher.suggest("t4") is not None  # nothing recorded yet, nothing running
    (tmp_path / LEDGER_FILE).write_text("row,trial_id\n0,t0\n1,t1\n2,t2\n")
    assert searcher.suggest("t5") == Searcher.FINISHED


def test_a_trial_fine_tunes_with_the_evaluators_settings_at_each_fidelity(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace
    from types import SimpleNamespace

    from core.budget import Budget
    from core.policy import Policy
    from core.result import Result
    from envs.evaluator import EvaluatorSettings
    from methods.finetune import FinetuneSettings
    from search.distributed import trial

    settings = EvaluatorSettings(finetune=FinetuneSettings(steps=40, lr=1e-3))
    used, reports = [], []
    evaluator = SimpleNamespace(
        settings=settings,
        refinement=lambda finetune: used.append(finetune) or finetune,
        compress=lambda policy, refinement: refinement,
        measure=lambda compressed: Result(val_accuracy=0.5, size_bytes=10, latency_ms=1.0),
    )
    monkeypatch.setattr(trial.tune, "report", reports.append)
    monkeypatch.setattr(trial.torch, "set_num_threads", lambda threads: None)
    monkeypatch.setattr(trial.ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "node"))
    context = trial.TrialContext(evaluator, Budget(), fidelity_steps(40, RayOptions()), threads=1)
    trial.run_trial({trial.POLICY_KEY: Policy().to_json()}, context)
    assert used == [replace(settings.finetune, steps=steps) for steps in (10, 20, 40)]
    assert [r[trial.STEPS_KEY] for r in reports] == [10, 20, 40] and reports[-1][trial.FINAL_KEY]


def test_the_sweep_samples_the_runtime_through_the_shared_space_and_reports_it() -> None:
    from core.budget import Budget
    from core.policy import Policy
    from core.result import Result
    from search.distributed.optuna_adapter import make_searcher
    from search.distributed.trial import POLICY_KEY, result_from_metrics, trial_metrics

    space = SearchSpace(("fc1", "fc2"), ("fc1",), SpaceSettings(), runtimes=("torch", "torch-int8"))
    searcher = make_searcher(space, RayOptions(), seed=0, concurrent=True)
    policies = [Policy.from_json(searcher.suggest(f"t{i}")[POLICY_KEY]) for i in range(12)]
    assert {p.runtime for p in policies} == {"torch", "torch-int8"}
    trial = searcher._ot_trials["t0"]  # noqa: SLF001 - the Optuna trial behind the Tune trial
    assert trial.params["runtime"] == policies[0].runtime
    result = Result(val_accuracy=0.9, size_bytes=10, latency_ms=1.0, runtime="torch-int8")
    metrics = trial_metrics(result, Budget(), steps=4, final=True, seconds=1.0)
    assert result_from_metrics(metrics, "ok").runtime == "torch-int8"


def test_the_sweep_records_the_runs_learned_method_in_every_policy() -> None:
    """With ``export.learned`` the evaluated policy names the method; the trial config (what trials.csv records)
    names it too, seeds included, unless a policy names its own."""
    from core.policy import Policy
    from search.distributed.optuna_adapter import make_searcher
    from search.distributed.trial import POLICY_KEY

    space = SearchSpace(("fc1", "fc2"), ("fc1",), SpaceSettings())
    searcher = make_searcher(space, RayOptions(), seed=0, concurrent=True, seeds=[space.most_compressed()],
                             learned="l0_gates")
    policies = [Policy.from_json(searcher.suggest(f"t{i}")[POLICY_KEY]) for i in range(4)]
    assert {p.learned for p in policies} == {"l0_gates"}
    plain = make_searcher(space, RayOptions(), seed=0, concurrent=True)
    assert Policy.from_json(plain.suggest("t0")[POLICY_KEY]).learned is None
