"""The device-runtime extension point: what a runtime provides, and the registry that holds the runtimes.

A runtime executes a decoded fp32 model on a device: it converts the model (:meth:`Runtime.convert`), says how
close the conversion stays to fp32 (:attr:`Runtime.tolerance`, bounding :func:`output_error`), and tells the
latency table how to time one layer (:meth:`Runtime.timing_case`) and what a call costs besides its layers
(:meth:`Runtime.call_cost_ms`). A new runtime is one module defining a :class:`Runtime` plus one
:func:`register` call in ``envs/runtimes/__init__.py``; ``tests/test_runtime_conformance.py`` then checks it.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import nn

from core.errors import first_line
from core.registry import Registry
from core.spec import SampleShape, as_shape

Timer = Callable[[nn.Module, torch.Tensor], float]
"""Milliseconds of one forward pass of a module on an input, as the device profile times it."""


class RuntimeConversionError(ValueError):
    """The model cannot be converted for the device's runtime (the message is one line)."""


class Runtime(ABC):
    """One way of executing a model on a device.

    Subclasses set :attr:`name`, :attr:`int8`, :attr:`tolerance` and :attr:`refuses` and implement :meth:`build`.
    """

    name: str
    """Registry name, as device profiles (``runtime:``) spell it."""
    int8: bool
    """True when the runtime executes Conv2d/Linear layers as int8 kernels (latency-table keys say ``int8``)."""
    tolerance: float
    """Largest :func:`output_error` of a converted model against the fp32 model on the calibration batch."""
    refuses: tuple[type[Exception], ...] = ()
    """Errors of the conversion tooling that mean "this model cannot be taken"; they become
    :class:`RuntimeConversionError`."""

    def unavailable(self) -> str | None:
        """Why this machine cannot run the runtime (e.g. a missing engine), or ``None`` when it can."""
        return None

    def convert(
        self, model: nn.Module, input_shape: Sequence[int], threads: int, calibration: torch.Tensor
    ) -> nn.Module:
        """``model`` as this runtime runs it, an ``nn.Module`` in every case; ``model`` itself is not modified.

        Args:
            model: the decoded fp32 model, on the CPU.
            input_shape: one sample's shape (without the batch dimension).
            threads: intra-op threads of an engine that keeps its own (PyTorch's are set while timing).
            calibration: representative inputs (int8 activation ranges).

        Raises:
            RuntimeConversionError: when the runtime cannot take the model.
        """
        tensors = itertools.chain(model.named_parameters(), model.named_buffers())
        elsewhere = next(((name, t.device) for name, t in tensors if t.device.type != "cpu"), None)
        if elsewhere is not None:
            raise RuntimeConversionError(
                f"runtime {self.name!r} cannot run the model: {elsewhere[0]!r} is on {elsewhere[1]}, not the CPU"
            )
        try:
            return self.build(model, as_shape(input_shape), threads, calibration)
        except self.refuses as exc:
            raise RuntimeConversionError(f"runtime {self.name!r} cannot run the model: {first_line(exc)}") from exc

    @abstractmethod
    def build(
        self, model: nn.Module, input_shape: tuple[int, ...], threads: int, calibration: torch.Tensor
    ) -> nn.Module:
        """The conversion itself (see :meth:`convert`); raises one of :attr:`refuses` for a model it cannot take."""

    def timing_case(self, layer: nn.Module, example: torch.Tensor, threads: int) -> tuple[nn.Module, torch.Tensor]:
        """What a latency-table entry times for one stand-alone Conv2d or Linear ``layer`` on ``example``.

        The default is the one-layer model converted for this runtime, on ``example``. The entry is the
        timed milliseconds less :meth:`call_cost_ms` (at least 0).
        """
        vocab = 0 if example.dtype.is_floating_point else int(example.max()) + 1  # index inputs keep their range
        shape = SampleShape(example.shape[1:], vocab)
        return self.convert(nn.Sequential(layer).eval(), shape, threads, example), example

    def call_cost_ms(self, example: torch.Tensor, threads: int, timer: Timer) -> float:
        """Milliseconds a call of a converted model costs besides its layers, on ``example`` (0 by default).

        A whole network pays it once, so the latency table leaves it out of every layer's entry.
        """
        return 0.0


RUNTIMES: Registry[Runtime] = Registry("runtime")
"""Every device runtime, by name (``envs/runtimes/__init__.py`` registers the built-in ones)."""


def register(runtime: Runtime) -> Runtime:
    """Adds ``runtime`` to :data:`RUNTIMES` under its :attr:`~Runtime.name`."""
    return RUNTIMES.register(runtime.name, runtime)


def output_error(reference: torch.Tensor, output: torch.Tensor) -> float:
    """``||output - reference|| / ||reference||`` over a whole batch of outputs: what :attr:`Runtime.tolerance` bounds.

    Relative, so that it does not depend on the logits' scale; over the batch, so that one borderline sample
    does not decide it (per-tensor int8 rounding moves every logit a little).
    """
    reference, output = reference.detach().float(), output.detach().float()
    return float((output - reference).norm() / reference.norm().clamp_min(1e-12))
