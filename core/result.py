"""What the evaluator measured for one candidate (leaf module)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_STOPPED = "stopped"
"""A candidate stopped early by a multi-fidelity scheduler (only a partial fine-tune was measured)."""


@dataclass(frozen=True)
class Result:
    """Measurements of one compressed candidate."""

    status: str = STATUS_OK
    """``ok``, ``failed`` or ``stopped`` (early, by ASHA)."""
    val_accuracy: float = float("nan")
    """The task's metric on the validation split as a higher-is-better score (:class:`core.metric.MetricSpec`):
    top-1 accuracy for classifiers, the negated value for lower-is-better metrics such as bits per character."""
    size_bytes: int = 0
    """Length of the packed file."""
    latency_ms: float = float("nan")
    """Latency on the device profile, as ``envs/timing.py`` measures it (paired with a reference model by default)."""
    latency_spread_ms: float = float("nan")
    """Range of the round medians of that measurement (NaN where it was predicted, or not recorded)."""
    macs: int = 0
    """Multiply-accumulates per sample of the compressed model (dense count)."""
    params: int = 0
    """Parameters of the compressed model's architecture."""
    nonzero_weights: int = 0
    """Weights of compressible layers that survive pruning."""
    seconds: float = 0.0
    """Wall time spent evaluating the candidate."""
    finetune_steps: int = 0
    """Fine-tune steps behind ``val_accuracy`` (more for a candidate promoted to the higher fidelity)."""
    screen_accuracy: float = float("nan")
    """Validation accuracy at the screening fidelity that every candidate gets (``val_accuracy`` unless the
    candidate was promoted; NaN where not recorded)."""
    error: str = ""
    """Error text of a failed candidate."""
    runtime: str = ""
    """Runtime the candidate was converted for, timed and evaluated on (empty where not recorded)."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Free-form extra metrics."""

    @property
    def ok(self) -> bool:
        """True when the evaluation succeeded."""
        return self.status == STATUS_OK

    @classmethod
    def failed(cls, error: str, seconds: float = 0.0) -> Result:
        """A failed candidate with its error text."""
        return cls(status=STATUS_FAILED, error=error, seconds=seconds)

    def to_dict(self) -> dict[str, Any]:
        """A flat dict (``extra`` is not included)."""
        data = asdict(self)
        data.pop("extra")
        return data
