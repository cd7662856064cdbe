"""The run configuration: defaults < YAML file < command line, validated in one place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from core.budget import Budget, parse_latency, parse_size
from core.errors import UsageError
from core.space import SpaceSettings
from envs.device import DEFAULT_DEVICE, list_devices
from envs.evaluator import EvaluatorSettings
from envs.learned_bases import ELASTIC_IMPORTANCE
from envs.tasks import DEFAULT_TASK, TASK_NAMES
from methods.channel_importance import CHANNEL_IMPORTANCES
from methods.compute import compute_device
from methods.learned import check_learned
from methods.quantizers import QUANTIZERS
from methods.saliency import SALIENCIES
from search.drivers import check_config, driver_for
from search.export import ExportSettings


@dataclass(frozen=True)
class SearchConfig:
    """Everything a run needs; ``config.yaml`` in a run folder holds one."""

    task: str = DEFAULT_TASK
    """Built-in task name, or a task file ``FILE.py:factory`` returning an ``envs.tasks.TaskDefinition`` (ignored
    when ``model`` is given)."""
    model: str | None = None
    """User model factory, ``FILE.py:factory`` or ``package.module:factory``."""
    weights: str | None = None
    """State-dict file for the user model (loaded with weights_only=True)."""
    data: str | None = None
    """User data factory returning (train, val, test) datasets."""
    metric: str | None = None
    """The metric to score by (``accuracy``, ``bpc``, ``mse``); default: the task's, or by the targets' dtype."""
    compute: str = "cpu"
    """Where training, fine-tuning, calibration and metric evaluation run: ``cpu``, ``cuda``, ``cuda:N``, ``mps``
    (latency is always measured on the device profile)."""
    budget_mb: str | None = None
    """Size budget of the packed file: 5, 5MB, 512KB, 5MiB (bare numbers are MB)."""
    target_latency: str | None = None
    """Latency target on the device: 20ms, 0.02s, 500us (bare numbers are ms)."""
    searcher: str = "tpe"
    """Searcher name."""
    trials: int = 40
    """Candidates evaluated in total (a resumed run continues up to this number)."""
    seed: int = 0
    """Seed of the searcher and of every fine-tune."""
    device: str = DEFAULT_DEVICE
    """Device profile in configs/devices/."""
    devices: tuple[str, ...] = ()
    """Device profiles to tune one Pareto set each for (one run sub-folder per device); overrides ``device``."""
    workers: int = 1
    """Trials evaluated at once (``ray`` searcher only)."""
    ray_address: str | None = None
    """Ray cluster to join, ``HOST:PORT`` or ``auto`` (``ray`` searcher); None starts a local one on loopback."""
    searcher_options: dict[str, Any] = field(default_factory=dict)
    """Settings of the chosen searcher (its ``options_type`` fields), e.g. the RL agent's."""
    space: SpaceSettings = field(default_factory=SpaceSettings)
    """Per-layer choices the searchers may make."""
    evaluator: EvaluatorSettings = field(default_factory=EvaluatorSettings)
    """Work per candidate."""
    export: ExportSettings = field(default_factory=ExportSettings)
    """Final fine-tune and export."""

    def __post_init__(self) -> None:
        compute_device(self.compute)  # an unknown name, or a GPU this machine lacks: one line, before any work
        if self.model is None and self.task not in TASK_NAMES and ":" not in self.task:
            raise UsageError(f"unknown task {self.task!r}; choose one of: {', '.join(TASK_NAMES)}, "
                             "or a task file FILE.py:factory")
        driver_for(self)  # an unknown searcher fails here
        if self.device not in list_devices():
            raise UsageError(f"unknown device {self.device!r}; choose one of: {', '.join(list_devices())}")
        self._check_devices()
        _check_registered_names(self.space)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise UsageError(f"workers must be a positive integer, got {self.workers!r}")
        check_config(self)
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise UsageError(f"trials must be a positive integer, got {self.trials!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise UsageError(f"seed must be an integer, got {self.seed!r}")
        if self.weights is not None and self.model is None:
            raise UsageError("--weights needs --model FILE.py:factory; built-in tasks train their own weights")
        self._check_elastic()
        self.budget  # noqa: B018 - parses both budgets so bad units fail here
        self.searcher_settings  # noqa: B018 - validates searcher_options

    def _check_elastic(self) -> None:
        """An elastic method (a supernet) is searched by cutting its first channels."""
        if self.export.learned is None or not check_learned(self.export.learned).elastic:
            return
        name = self.export.learned
        if not self.space.channel_pruning:
            raise UsageError(f"export.learned {name!r} trains a supernet of channel widths: set "
                             "space.channel_pruning: true (or use --ofa)")
        if tuple(self.space.channel_importances) != (ELASTIC_IMPORTANCE,):
            raise UsageError(f"export.learned {name!r} is cut at its first channels: set space.channel_importances: "
                             f"[{ELASTIC_IMPORTANCE}] (or use --ofa, which sets it)")

    def _check_devices(self) -> None:
        devices = self.devices
        if isinstance(devices, str):
            devices = tuple(name.strip() for name in devices.split(","))
        if not isinstance(devices, (list, tuple)) or not all(isinstance(d, str) for d in devices):
            raise UsageError(f"devices must be a list of device names, got {self.devices!r}")
        devices = tuple(devices)
        object.__setattr__(self, "devices", devices)
        unknown = [d for d in devices if d not in list_devices()]
        if unknown:
            raise UsageError(f"unknown device {unknown[0]!r} in --devices; choose from: {', '.join(list_devices())}")
        if len(set(devices)) != len(devices):
            raise UsageError(f"--devices lists a device twice: {', '.join(devices)}")

    @property
    def searcher_settings(self) -> Any:
        """The searcher's options object (``None`` for searchers without options).

        Raises:
            UsageError: when ``searcher_options`` does not fit the searcher.
        """
        options_type = driver_for(self).options_type(self.searcher)
        if options_type is None:
            if self.searcher_options:
                raise UsageError(f"searcher {self.searcher!r} takes no searcher_options")
            return None
        if not isinstance(self.searcher_options, Mapping):
            raise UsageError("searcher_options must be a mapping")
        try:
            return options_type(**dict(self.searcher_options))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"bad searcher_options for {self.searcher!r}: {exc}") from exc

    @property
    def budget(self) -> Budget:
        """The parsed budget."""
        return Budget(
            size_bytes=None if self.budget_mb is None else parse_size(self.budget_mb),
            latency_ms=None if self.target_latency is None else parse_latency(self.target_latency),
        )

    @property
    def task_label(self) -> str:
        """Short name of what is compressed."""
        if self.model:
            return "user"
        return "task" if ":" in self.task else self.task

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready dict (sections as :func:`section_to_dict` writes them)."""
        data = asdict(self)
        for name in _NESTED:
            data[name] = section_to_dict(getattr(self, name))
        data["devices"] = list(self.devices)
        return data

    def to_yaml(self) -> str:
        """The YAML text of :meth:`to_dict`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_NESTED = {"space": SpaceSettings, "evaluator": EvaluatorSettings, "export": ExportSettings}
ONCE_FOR_ALL: dict[str, dict[str, Any]] = {
    "export": {"learned_lr": 3e-4},
    "space": {"channel_importances": [ELASTIC_IMPORTANCE], "learned_seed": False, "channel_pruning": True},
    "evaluator": {"finetune_steps": 0, "promote_top": 0.0},
}
"""What ``--ofa`` sets where the config file does not: the searchers cut sub-networks from the supernet
(``export.learned: ofa``) and score them with no fine-tune (BatchNorm recalibrated)."""


def once_for_all(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (config keys) in once-for-all search mode: ``export.learned: ofa`` plus :data:`ONCE_FOR_ALL` where
    ``values`` leaves them unset.

    Raises:
        UsageError: when ``values`` names another learned method.
    """
    merged = dict(values)
    for section, defaults in ONCE_FOR_ALL.items():
        given = merged.get(section) or {}
        if not isinstance(given, Mapping):
            raise UsageError(f"config section {section!r} must be a mapping")
        merged[section] = {**defaults, **given}
    learned = merged["export"].get("learned")
    if learned not in (None, "ofa"):
        raise UsageError(f"--ofa searches a once-for-all supernet; drop export.learned {learned!r} (or --learned)")
    merged["export"]["learned"] = "ofa"
    return merged
FINETUNE_FIELD = "finetune"
"""The field of a section that holds a :class:`FinetuneSettings`; config.yaml spells it as the section's
``FINETUNE_KEYS`` (flat keys such as ``finetune_steps``), the one place that maps the two shapes."""


def _check_registered_names(space: SpaceSettings) -> None:
    """Every quantizer, saliency and channel criterion the space allows is a registered one.

    Raises:
        UsageError: naming the first unknown entry and the registered choices.
    """
    for key, registry in (("quantizers", QUANTIZERS), ("saliencies", SALIENCIES),
                          ("channel_importances", CHANNEL_IMPORTANCES)):
        unknown = [name for name in getattr(space, key) if name not in registry]
        if unknown:
            raise UsageError(f"unknown {registry.kind} {unknown[0]!r} in space.{key}; "
                             f"choose from: {', '.join(registry.names())}")


def _finetune_keys(cls: type) -> dict[str, str]:
    return dict(getattr(cls, "FINETUNE_KEYS", ()))


def section_to_dict(settings: Any) -> dict[str, Any]:
    """A settings section as config.yaml holds it: lists for tuples, the fine-tune as its flat keys."""
    data: dict[str, Any] = {}
    for item in fields(settings):
        value = getattr(settings, item.name)
        if item.name == FINETUNE_FIELD:
            data.update({key: getattr(value, name) for key, name in _finetune_keys(type(settings)).items()})
        else:
            data[item.name] = list(value) if isinstance(value, tuple) else value
    return data


def _nested(name: str, value: Any) -> Any:
    """The settings section ``name`` from its config.yaml mapping (see :func:`section_to_dict`)."""
    cls = _NESTED[name]
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise UsageError(f"config section {name!r} must be a mapping")
    flat = _finetune_keys(cls)
    allowed = ({f.name for f in fields(cls)} - {FINETUNE_FIELD}) | set(flat)
    unknown = set(value) - allowed
    if unknown:
        raise UsageError(f"unknown key(s) in config section {name!r}: {', '.join(sorted(unknown))}")
    values = {key: item for key, item in value.items() if key not in flat}
    try:
        if flat:
            default = getattr(cls(), FINETUNE_FIELD)  # a partial section keeps the section's own defaults
            values[FINETUNE_FIELD] = replace(default, **{flat[key]: item for key, item in value.items() if key in flat})
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad value in config section {name!r}: {exc}") from exc


def read_config_file(path: Path) -> dict[str, Any]:
    """Reads a YAML config file into a dict of SearchConfig fields.

    Raises:
        UsageError: when the file is missing, not YAML, or has unknown keys.
    """
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping of settings")
    allowed = {f.name for f in fields(SearchConfig)}
    unknown = set(data) - allowed
    if unknown:
        raise UsageError(
            f"unknown key(s) in {path}: {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}"
        )
    return data


def build_config(values: Mapping[str, Any], base: SearchConfig | None = None) -> SearchConfig:
    """Builds a validated config from ``base`` (or the defaults) updated with ``values``."""
    merged = {k: v for k, v in values.items() if v is not None}
    for name in _NESTED:
        if name in merged:
            merged[name] = _nested(name, merged[name])
    try:
        return replace(base, **merged) if base is not None else SearchConfig(**merged)
    except TypeError as exc:
        raise UsageError(f"bad configuration: {exc}") from exc
