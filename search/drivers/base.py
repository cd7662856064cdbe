"""The driver protocol: how a run's candidates get proposed and evaluated.

A driver owns everything that differs between running the search in this process and running it
elsewhere (a Ray Tune sweep): the ``--searcher`` names it runs and their ``searcher_options`` type,
the config checks it imposes, the evaluator class it needs, the session around a run (e.g. a Ray
connection), the search loop itself, and what a resumed run may change.

Drivers read the configuration through :class:`RunSettings` and the prepared run through
:class:`PreparedRun`; :class:`search.config.SearchConfig` and :class:`search.prepared.Prepared` fit
them, and drivers import neither, so the configuration can look its driver up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Protocol

from core.budget import Budget
from core.space import SearchSpace, SpaceSettings
from envs.evaluator import Evaluator
from search.archive import Trial


class RunSettings(Protocol):
    """The settings of a run that drivers read."""

    @property
    def searcher(self) -> str: ...

    @property
    def trials(self) -> int: ...

    @property
    def seed(self) -> int: ...

    @property
    def device(self) -> str: ...

    @property
    def devices(self) -> tuple[str, ...]: ...

    @property
    def workers(self) -> int: ...

    @property
    def ray_address(self) -> str | None: ...

    @property
    def space(self) -> SpaceSettings: ...

    @property
    def budget(self) -> Budget: ...

    @property
    def searcher_settings(self) -> Any: ...


class PreparedRun(Protocol):
    """A run ready to search."""

    @property
    def config(self) -> RunSettings: ...

    @property
    def evaluator(self) -> Evaluator: ...

    @property
    def space(self) -> SearchSpace: ...


class Driver(ABC):
    """Runs the search of the ``--searcher`` names it claims; one instance per driver in ``DRIVERS``."""

    name: ClassVar[str]
    """Registry name."""
    own_settings: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    """Config fields only this driver reads, each with its unset value; the other drivers refuse a set one."""

    @abstractmethod
    def searchers(self) -> tuple[str, ...]:
        """The ``--searcher`` names this driver runs."""

    @abstractmethod
    def options_type(self, searcher: str) -> type | None:
        """Dataclass of ``searcher_options`` for ``searcher`` (``None``: it takes none)."""

    def check(self, config: RunSettings) -> None:  # noqa: B027 - optional hook
        """Refuses settings this driver cannot honour.

        Raises:
            UsageError: naming the setting.
        """

    def evaluator_type(self) -> type[Evaluator]:
        """The evaluator class its runs measure candidates with."""
        return Evaluator

    def session(self, config: RunSettings) -> AbstractContextManager[None]:
        """Context around a whole run (all devices of a ``--devices`` run), entered before anything is prepared.

        Raises:
            UsageError: when the run cannot start (e.g. an unreachable cluster).
        """
        return nullcontext()

    def check_resume(self, saved: RunSettings, trials: int | None) -> None:  # noqa: B027 - optional hook
        """Refuses a new trial total (``trials``) that a resumed run of ``saved`` cannot take.

        Raises:
            UsageError: when it cannot.
        """

    @abstractmethod
    def search(self, prepared: PreparedRun, run_dir: Path, progress: bool) -> list[Trial]:
        """Evaluates the run's remaining trials (resuming from ``run_dir``); returns all rows of its trials.csv."""
