"""Conformance suite: every registered search driver passes the same checks."""

from __future__ import annotations

import csv
import dataclasses
import sys
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import yaml
from ray_cluster import namespace_problem, run_in_cluster

from core.errors import UsageError
from envs.evaluator import Evaluator
from search.config import SearchConfig, build_config
from search.drivers import DRIVERS, Driver, driver_for, searcher_names

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = {f.name: f.default for f in dataclasses.fields(SearchConfig)}


@pytest.fixture(params=DRIVERS.names())
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def _config(searcher: str, **settings: object) -> SearchConfig:
    return build_config({"task": "lenet300", "searcher": searcher, **settings})


def test_each_searcher_has_exactly_one_driver(name: str) -> None:
    driver = DRIVERS[name]
    assert isinstance(driver, Driver) and driver.name == name
    assert driver.searchers()
    for searcher in driver.searchers():
        assert [n for n, d in DRIVERS.items() if searcher in d.searchers()] == [name]
        assert driver_for(_config(searcher)) is driver
    assert len(set(searcher_names())) == len(searcher_names())


def test_options_types_build_with_their_defaults(name: str) -> None:
    driver = DRIVERS[name]
    for searcher in driver.searchers():
        options_type = driver.options_type(searcher)
        assert options_type is None or dataclasses.is_dataclass(options_type)
        assert _config(searcher).searcher_settings == (None if options_type is None else options_type())


def test_default_configs_pass_the_checks_and_open_a_session(name: str) -> None:
    driver = DRIVERS[name]
    assert issubclass(driver.evaluator_type(), Evaluator)
    for searcher in driver.searchers():
        config = _config(searcher)
        driver.check(config)
        driver.check_resume(config, None)
        driver.check_resume(config, config.trials)
        assert isinstance(driver.session(config), AbstractContextManager)  # entered only by a real run


def test_own_settings_are_refused_by_every_other_driver(name: str) -> None:
    driver = DRIVERS[name]
    for key, unset in driver.own_settings.items():
        assert DEFAULTS[key] == unset, f"{key}: the unset value must be SearchConfig's default"
    for other_name, other in DRIVERS.items():
        if other_name == name:
            continue
        for key, unset in driver.own_settings.items():
            value = unset + 1 if isinstance(unset, int) else "127.0.0.1:6379"
            with pytest.raises(UsageError, match=f"need --searcher {driver.searchers()[0]}"):
                _config(other.searchers()[0], **{key: value})


def test_unknown_searchers_name_every_choice() -> None:
    with pytest.raises(UsageError, match="unknown searcher") as error:
        _config("genetic")
    assert all(searcher in str(error.value) for searcher in searcher_names())


@pytest.mark.slow
def test_a_run_and_its_resume_write_the_trial_total(name: str, tmp_path: Path) -> None:
    """The real CLI with the driver's first searcher, in a private network namespace (a Ray driver may start a
    local cluster there); resuming the finished run adds no row."""
    problem = namespace_problem()
    if problem is not None:
        pytest.skip(problem)
    searcher = DRIVERS[name].searchers()[0]
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"evaluator": {"finetune_steps": 4},
                                        "export": {"finetune_epochs": 0.02, "max_models": 1}}))
    run = tmp_path / "run"
    search = [sys.executable, str(ROOT / "search.py")]
    for args in (["--task", "lenet300", "--searcher", searcher, "--trials", "3", "--config", str(settings),
                  "--out", str(run)], ["--resume", str(run)]):
        proc = run_in_cluster([], [*search, *args, "--quiet"], cwd=tmp_path, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        with open(run / "trials.csv", newline="") as handle:
            assert len(list(csv.DictReader(handle))) == 3
    assert yaml.safe_load((run / "config.yaml").read_text())["searcher"] == searcher
