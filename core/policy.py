"""Per-layer compression decisions: the search space's point type.

This is a leaf module (no torch, optuna or gymnasium imports). A :class:`Policy`
fully describes a candidate: from (task, policy, seed) the compressed model can
be rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

POLICY_FORMAT_VERSION = 1
FP32_BITS = 32
MAX_SPARSITY = 0.99
MIN_KEEP = 0.05
DEFAULT_QUANTIZER = "linear"
"""The default weight quantizer; the registered ones (and their check) are in ``methods/quantizers/``."""


def check_criterion_name(field_name: str, value: object) -> None:
    """Raises ``ValueError`` unless ``value`` is a non-empty string (the registries in ``methods`` check the name)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field_name} must be a non-empty string, got {value!r}")


@dataclass(frozen=True)
class LayerChoice:
    """What to do with one compressible layer."""

    sparsity: float = 0.0
    """Fraction of the layer's weights set to zero by fine-grained pruning, in [0, 0.99]."""
    bits: int = FP32_BITS
    """Weight code width: 1-8 for linear per-output-channel codes, 32 for fp32."""
    keep: float = 1.0
    """Fraction of output channels kept by structured pruning, in [0.05, 1]."""
    quantizer: str = DEFAULT_QUANTIZER
    """How codes map to values when ``bits`` < 32: a quantizer registered in ``methods/quantizers/``
    (``linear``, ``kmeans``, ...); checked where the policy is applied."""
    rank: float = 1.0
    """Fraction of the layer's full rank kept by a truncated-SVD factorisation (1 = not factorised)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity <= MAX_SPARSITY:
            raise ValueError(f"sparsity must be in [0, {MAX_SPARSITY}], got {self.sparsity}")
        if not (1 <= self.bits <= 8 or self.bits == FP32_BITS):
            raise ValueError(f"bits must be 1-8 or {FP32_BITS}, got {self.bits}")
        if not MIN_KEEP <= self.keep <= 1.0:
            raise ValueError(f"keep must be in [{MIN_KEEP}, 1], got {self.keep}")
        if not isinstance(self.quantizer, str) or not self.quantizer:
            raise ValueError(f"quantizer must be a non-empty name, got {self.quantizer!r}")
        if not 0.0 < self.rank <= 1.0:
            raise ValueError(f"rank must be in (0, 1], got {self.rank}")
        if self.bits == FP32_BITS:
            object.__setattr__(self, "quantizer", DEFAULT_QUANTIZER)  # fp32 has no codes: one canonical form
        object.__setattr__(self, "sparsity", round(float(self.sparsity), 6))
        object.__setattr__(self, "keep", round(float(self.keep), 6))
        object.__setattr__(self, "rank", round(float(self.rank), 6))
        object.__setattr__(self, "bits", int(self.bits))

    @property
    def quantized(self) -> bool:
        """True when the weights are stored as integer codes."""
        return self.bits != FP32_BITS


_LATER_DEFAULTS = {"quantizer": DEFAULT_QUANTIZER, "rank": 1.0}
"""Fields added after format version 1, with the default that is left out of the JSON."""


def _choice_dict(choice: LayerChoice) -> dict[str, Any]:
    data = asdict(choice)
    for name, default in _LATER_DEFAULTS.items():
        if data[name] == default:
            del data[name]
    return data


@dataclass(frozen=True)
class Policy:
    """Per-layer choices keyed by module name; layers not listed stay uncompressed."""

    layers: tuple[tuple[str, LayerChoice], ...] = field(default_factory=tuple)
    saliency: str = "magnitude"
    """Which weights fine-grained pruning removes first (one criterion for the whole network): a name in
    ``methods.saliency.SALIENCIES``."""
    channel_importance: str = "l1"
    """Which channels structured pruning removes first (one criterion for the whole network): a name in
    ``methods.channel_importance.CHANNEL_IMPORTANCES``."""
    runtime: str | None = None
    """Runtime the candidate is converted for and timed on (one for the whole network): a name in
    ``envs.runtimes.RUNTIMES`` that the device profile allows; ``None`` = the profile's default runtime."""
    learned: str | None = None
    """Learned-sparsity method whose penalised training the model gets before the per-layer choices apply (a name
    in ``methods.learned.LEARNED``): the weights and channels it zeroes stay removed, so each layer's sparsity and
    keep become floors; ``None`` = the task's trained weights as they are."""

    def __post_init__(self) -> None:
        check_criterion_name("saliency", self.saliency)
        check_criterion_name("channel_importance", self.channel_importance)
        if self.runtime is not None:
            check_criterion_name("runtime", self.runtime)
        if self.learned is not None:
            check_criterion_name("learned", self.learned)
        names = [name for name, _ in self.layers]
        if len(set(names)) != len(names):
            raise ValueError("a policy names each layer at most once")
        object.__setattr__(self, "layers", tuple(sorted(self.layers)))

    @classmethod
    def from_choices(
        cls,
        choices: Mapping[str, LayerChoice],
        saliency: str = "magnitude",
        channel_importance: str = "l1",
        runtime: str | None = None,
        learned: str | None = None,
    ) -> Policy:
        """Builds a policy from a ``{module name: LayerChoice}`` mapping."""
        return cls(tuple(choices.items()), saliency, channel_importance, runtime, learned)

    @classmethod
    def uniform(cls, names: list[str], choice: LayerChoice, saliency: str = "magnitude") -> Policy:
        """The same choice for every named layer."""
        return cls(tuple((name, choice) for name in names), saliency)

    def __getitem__(self, name: str) -> LayerChoice:
        return self.choices.get(name, LayerChoice())

    def __iter__(self) -> Iterator[tuple[str, LayerChoice]]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def choices(self) -> dict[str, LayerChoice]:
        """The choices as a plain dict."""
        return dict(self.layers)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with a format version tag.

        Fields at their default are left out when they were added after version 1 (``runtime`` and ``learned``
        when ``None``), so digests of earlier policies stay valid.
        """
        data: dict[str, Any] = {
            "version": POLICY_FORMAT_VERSION,
            "layers": {name: _choice_dict(choice) for name, choice in self.layers},
        }
        if self.saliency != "magnitude":
            data["saliency"] = self.saliency
        if self.channel_importance != "l1":
            data["channel_importance"] = self.channel_importance
        if self.runtime is not None:
            data["runtime"] = self.runtime
        if self.learned is not None:
            data["learned"] = self.learned
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: on an unknown version or a malformed entry.
        """
        version = data.get("version")
        if version != POLICY_FORMAT_VERSION:
            raise ValueError(f"unsupported policy version {version!r}")
        layers = data.get("layers")
        if not isinstance(layers, Mapping):
            raise ValueError("policy 'layers' must be a mapping")
        choices = tuple((str(name), LayerChoice(**dict(c))) for name, c in layers.items())
        saliency, importance = data.get("saliency", "magnitude"), data.get("channel_importance", "l1")
        return cls(choices, saliency, importance, data.get("runtime"), data.get("learned"))

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Policy:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def digest(self) -> str:
        """A stable 16-hex-digit hash of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
