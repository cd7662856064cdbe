"""Search drivers: who proposes and evaluates a run's candidates, chosen by :func:`driver_for`.

- ``local``: the ask/evaluate/tell loop in this process, for every searcher of ``search.searchers``.
- ``ray``: the Ray Tune sweep of :mod:`search.distributed` (``--searcher ray``).

A new driver is one module with a :class:`Driver` subclass plus one ``DRIVERS.register`` line
below; tests/test_drivers.py checks every registered driver.
"""

from __future__ import annotations

from core.errors import UsageError
from core.registry import Registry
from search.drivers.base import Driver, PreparedRun, RunSettings
from search.drivers.local import LocalDriver
from search.drivers.ray_tune import RayTuneDriver

DRIVERS: Registry[Driver] = Registry("search driver")
"""Every driver, by name."""
DRIVERS.register(LocalDriver.name, LocalDriver())
DRIVERS.register(RayTuneDriver.name, RayTuneDriver())


def searcher_names() -> tuple[str, ...]:
    """Every ``--searcher`` name, driver by driver."""
    return tuple(searcher for _, driver in DRIVERS.items() for searcher in driver.searchers())


def driver_for(config: RunSettings) -> Driver:
    """The driver that runs ``config.searcher``.

    Raises:
        UsageError: for a searcher no driver runs.
    """
    for _, driver in DRIVERS.items():
        if config.searcher in driver.searchers():
            return driver
    raise UsageError(f"unknown searcher {config.searcher!r}; choose one of: {', '.join(searcher_names())}")


def check_config(config: RunSettings) -> None:
    """The checks of ``config``'s driver, and that no other driver's own settings are set.

    Raises:
        UsageError: naming the setting.
    """
    driver = driver_for(config)
    driver.check(config)
    for _, other in DRIVERS.items():
        if other is not driver and any(getattr(config, key) != unset for key, unset in other.own_settings.items()):
            flags = " and ".join(f"--{key.replace('_', '-')}" for key in other.own_settings)
            raise UsageError(f"{flags} need --searcher {' or '.join(other.searchers())}")


__all__ = ["DRIVERS", "Driver", "PreparedRun", "RunSettings", "check_config", "driver_for", "searcher_names"]
