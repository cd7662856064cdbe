"""Settings of the Ray searcher (no Ray import)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from search.searchers.samplers import SAMPLERS

SCHEDULERS: tuple[str, ...] = ("asha", "fifo")
"""Trial schedulers: ``asha`` (multi-fidelity when fine-tuning is in the loop) or ``fifo``."""


@dataclass(frozen=True)
class RayOptions:
    """Settings of ``--searcher ray`` (``searcher_options`` in the config)."""

    sampler: str = "tpe"
    """Optuna sampler of :mod:`search.searchers.samplers`: ``tpe`` (accuracy, budgets as constraints) or
    ``nsga2`` (accuracy, size, latency)."""
    scheduler: str = "asha"
    """``asha``: ASHA over fine-tune steps when ``evaluator.finetune_steps`` > 0 (else FIFO); or ``fifo``."""
    max_failures: int = 2
    """Retries of a trial that raises or loses its node before it is recorded as failed."""
    threads_per_trial: int = 1
    """CPUs reserved by each trial, and its torch intra-op threads."""
    rungs: int = 3
    """ASHA fidelity levels over the fine-tune steps (the last is the full fine-tune)."""
    reduction_factor: int = 2
    """ASHA's reduction factor; fidelity levels are ``steps / factor**k``."""

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS.names())}, got {self.sampler!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        for name, low in (("max_failures", 0), ("threads_per_trial", 1), ("rungs", 1), ("reduction_factor", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    def uses_asha(self, finetune_steps: int) -> bool:
        """True when trials report intermediate fidelities and ASHA may stop them."""
        return self.scheduler == "asha" and finetune_steps > 0 and self.rungs > 1


def fidelity_steps(finetune_steps: int, options: RayOptions) -> tuple[int, ...]:
    """Fine-tune steps at which a trial reports: ASHA's milestones, ending with the full fine-tune.

    Returns ``(finetune_steps,)`` when ASHA is off (one report per trial).
    """
    if not options.uses_asha(finetune_steps):
        return (finetune_steps,)
    grace = max(1, finetune_steps // options.reduction_factor ** (options.rungs - 1))
    steps, milestone = [], grace
    while milestone < finetune_steps:
        steps.append(milestone)
        milestone *= options.reduction_factor
    return (*steps, finetune_steps)


def parse_address(text: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``HOST:PORT`` cluster address; ``None`` for ``auto`` (Ray finds the cluster).

    Raises:
        ValueError: for anything else (including ``ray://`` client addresses, which would run the
            Tune driver, and so trials.csv, on the head node).
    """
    text = str(text).strip()
    if text == "auto":
        return None
    match = re.fullmatch(r"(?P<host>[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})", text)
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"Ray address must look like HOST:PORT (e.g. 10.0.0.5:6379) or 'auto', got {text!r}")
    return match["host"].strip("[]"), int(match["port"])
