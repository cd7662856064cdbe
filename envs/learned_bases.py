"""The task's model after a learned-sparsity method's training, once per method and run, and the policies it floors."""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from core.errors import UsageError
from core.paths import default_cache_dir
from core.policy import MIN_KEEP, LayerChoice, Policy
from envs.tasks import Task
from envs.tasks.data import data_fingerprint
from envs.tasks.registry import save_state_atomic
from envs.tasks.user import one_line, read_state_dict, state_dict_problems
from methods.coupled_channels import CoupledChannels, coupled_channels
from methods.layer_kinds import weight_keys
from methods.learned import Learned, LearnedSettings, Target, check_learned, learn
from methods.structured import kept_channels

ELASTIC_IMPORTANCE = "index"
"""The channel importance that cuts an elastic method's supernet: its first channels."""
SUPERNET_CACHE_VERSION = 1
"""Bumped when a cached supernet of an older version of the code must not be read."""

logger = logging.getLogger(__name__)


def _save(model: nn.Module, outcome: Learned, path: Path) -> None:
    """Keeps a trained model and its outcome at ``path`` as one flat state_dict (read without running code)."""
    state = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    state |= {f"statistic.{k}": v.detach().clone() for k, v in outcome.statistics.items()}
    state["seconds"] = torch.tensor(outcome.seconds, dtype=torch.float64)
    save_state_atomic(state, path)


@dataclass(frozen=True)
class LearnedBase:
    """The task's model after one learned method's training."""

    model: nn.Module
    """The trained model (eval mode, CPU); its removed weights and channels are exactly zero."""
    outcome: Learned
    """Its training time and the method's statistics."""
    dead: dict[str, int]
    """Exactly-zero channels per group leader (structured pruning removes them)."""
    kept_weights: float
    """Fraction of the compressible weights left non-zero."""
    bits: dict[str, int]
    """Per layer, the bit width the method read from its posterior (``bayesian``; empty for the others)."""


class LearnedBases:
    """Trains the task's model with each learned method a policy names, once, and floors policies on the result."""

    def __init__(self, task: Task, layers: Sequence[str], leaders: Sequence[str],
                 compute: torch.device | str = "cpu", channel_multiple: int = 1) -> None:
        self.task = task
        self.layer_keys = {name: weight_keys(task.model, name) for name in layers}
        self.keys = tuple(key for keys in self.layer_keys.values() for key in keys)
        self.leaders = tuple(leaders)
        self.compute = compute
        self.settings = LearnedSettings()
        """The training every method runs (a run sets it from ``export.learned_*`` and its seed)."""
        self.progress = False
        """Show a progress bar while a method trains."""
        self.keeps: tuple[float, ...] = ()
        """The keep ratios the search may give a channel group (a run sets them from its space): an elastic method
        trains each group at exactly the widths they cut (empty: every width)."""
        self.channel_multiple = channel_multiple
        """The device's channel multiple, which rounds those widths as structured pruning does."""
        self.cache_dir: Path | None = default_cache_dir() / "supernets"
        """Where elastic methods' trained supernets are kept across runs (``None``: not kept)."""
        self._groups: list[CoupledChannels] | None = None
        self._bases: dict[tuple[str, LearnedSettings], LearnedBase] = {}

    @property
    def groups(self) -> list[CoupledChannels]:
        """The channel groups the structured methods may penalise and remove (traced once)."""
        if self._groups is None:
            self._groups = coupled_channels(self.task.model, self.task.input_shape, self.leaders)
        return self._groups

    def base(self, name: str) -> LearnedBase:
        """The model trained with method ``name`` under :attr:`settings` (trained on first use).

        Raises:
            ValueError: for an unknown method (``UnknownEntryError``).
            UsageError: when the method's training fails on this model.
        """
        method = check_learned(name)
        key = (name, self.settings)
        if key not in self._bases:
            groups = self.groups
            label = f"learned {name}" if self.progress else ""
            target = Target(self.keys, groups, self.task.train, self.task.loss, self.compute, label,
                            initial=self.task.initial, widths=self.widths())
            path = self._cache_path(name, target) if method.elastic and self.cache_dir is not None else None
            found = self._cached(path)
            if found is not None:
                model, outcome = found
            else:
                try:
                    model, outcome = learn(self.task.model, name, target, self.settings)
                except UsageError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a user's model can fail a method's training in many ways
                    raise UsageError(f"learned method {name!r} cannot train this model ({one_line(exc)}); "
                                     "choose another method") from exc
                if path is not None:
                    _save(model, outcome, path)
            params = dict(model.named_parameters())
            dead = {g.leader: int(g.dead(params).sum()) for g in groups}
            total = sum(params[k].numel() for k in self.keys)
            kept = sum(int(torch.count_nonzero(params[k])) for k in self.keys) / max(1, total)
            self._bases[key] = LearnedBase(model, outcome, dead, kept, self._layer_bits(outcome))
            logger.info("learned %s: %.1f s, %.2f%% of the weights kept, %d channels removed", name,
                        outcome.seconds, 100 * kept, sum(dead.values()))
        return self._bases[key]

    def inelastic(self, name: str) -> list[str]:
        """Leaders of the channel groups that method ``name``, when elastic, leaves whole (``[]`` otherwise)."""
        if not check_learned(name).elastic:
            return []
        covered = {g.leader for g in self.groups}
        return [leader for leader in self.leaders if leader not in covered]

    def widths(self) -> dict[str, tuple[int, ...]]:
        """Per group leader, the channel counts :attr:`keeps` cut it to (empty without keeps)."""
        if not self.keeps:
            return {}
        return {g.leader: tuple(sorted({kept_channels(g.channels, k, self.channel_multiple) for k in self.keeps}))
                for g in self.groups}

    def _cache_path(self, name: str, target: Target) -> Path:
        """The cache file of method ``name``'s training of this task's model under :attr:`settings`."""
        weights = hashlib.sha256()
        for key, value in sorted(self.task.model.state_dict().items()):
            weights.update(f"{key}{tuple(value.shape)}{value.dtype};".encode())
            weights.update(value.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
        code = hashlib.sha256()
        for source in (type(check_learned(name)), CoupledChannels):
            code.update(Path(inspect.getfile(source)).read_bytes())
        key = {
            "version": SUPERNET_CACHE_VERSION, "method": name, "settings": asdict(self.settings),
            "weights": weights.hexdigest(), "data": data_fingerprint((self.task.train,)),
            "groups": [(g.leader, g.channels) for g in target.groups],
            "widths": sorted((k, list(v)) for k, v in (target.widths or {}).items()),
            "compute": torch.device(self.compute).type, "code": code.hexdigest(),
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / f"{name}-{digest}.pt" if self.cache_dir else Path(f"{name}-{digest}.pt")

    def _cached(self, path: Path | None) -> tuple[nn.Module, Learned] | None:
        """The model and outcome kept at ``path``, or None (a missing or unusable file: retrained)."""
        if path is None or not path.is_file():
            return None
        try:
            state = read_state_dict(path)
            weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
            problems = state_dict_problems(self.task.model, weights)
            if problems or "seconds" not in state:
                raise ValueError("; ".join(problems) or "no training time")
            model = copy.deepcopy(self.task.model)
            model.load_state_dict(weights, strict=True)
        except (UsageError, ValueError, RuntimeError) as exc:
            logger.warning("ignoring unusable supernet cache %s (%s); training again", path, one_line(exc))
            return None
        statistics = {k[len("statistic."):]: v for k, v in state.items() if k.startswith("statistic.")}
        logger.info("loaded the trained supernet from %s", path)
        return model.eval(), Learned(float(state["seconds"]), statistics, cached=True)

    def _layer_bits(self, outcome: Learned) -> dict[str, int]:
        """Each layer's bit width from the method's per-weight ``bits:KEY`` statistics (the widest of its weights)."""
        bits: dict[str, int] = {}
        for name, keys in self.layer_keys.items():
            found = [int(outcome.statistics[f"bits:{k}"]) for k in keys if f"bits:{k}" in outcome.statistics]
            if found:
                bits[name] = max(found)
        return bits

    @property
    def trained(self) -> dict[str, LearnedBase]:
        """Every base trained so far, by method name."""
        return {name: base for (name, _), base in self._bases.items()}

    def floored(self, policy: Policy) -> Policy:
        """``policy`` with each group leader's keep at most the fraction of its channels the method left alive, and
        each layer it leaves at fp32 at the bit width the method read, if it reads one (linear codes). An elastic
        method's policy cuts its first channels (:data:`ELASTIC_IMPORTANCE`) and keeps whole the groups the supernet
        did not make elastic."""
        if policy.learned is None:
            return policy
        base, groups = self.base(policy.learned), {g.leader: g.channels for g in self.groups}
        choices = policy.choices
        importance = policy.channel_importance
        if check_learned(policy.learned).elastic:  # a supernet's sub-networks are its first channels
            importance = ELASTIC_IMPORTANCE
            for leader in self.leaders:
                if leader not in groups and leader in choices:
                    choices[leader] = replace(choices[leader], keep=1.0)
        for name, bits in base.bits.items():
            choice = choices.get(name, LayerChoice())
            if not choice.quantized:
                choices[name] = replace(choice, bits=bits, quantizer="linear")
        for leader, dead in base.dead.items():
            if dead:
                alive = max(MIN_KEEP, (groups[leader] - dead) / groups[leader])
                choice = choices.get(leader, LayerChoice())
                choices[leader] = replace(choice, keep=min(choice.keep, alive))
        return Policy.from_choices(choices, policy.saliency, importance, policy.runtime, policy.learned)
