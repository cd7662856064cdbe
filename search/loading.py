"""Rebuilds runnable models from packed files, running no code that a file names.

A packed file's header says which model it was made from (``meta["source"]``): a built-in task, or a
user's ``FILE.py:factory``. Like ``torch.load(..., weights_only=True)``, loading never imports or calls
what a file names unless the caller opts in: a header can be edited by whoever hands over the file.
It also names the device runtime the model was measured on; :func:`runnable_model` converts the model for it
(a registered runtime only: the name is looked up, never imported).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import UsageError
from envs.runtimes import RUNTIMES, RuntimeConversionError
from envs.tasks import TASK_NAMES, build_architecture
from methods.examples import zeros_batch
from methods.packing import Header, PackFormatError, read_header, unpack
from methods.pipeline import input_shape_of, replay_structure

_ARCHITECTURE_OPTIONS = (
    "load_model(path, model=<a module of that architecture>), load_model(path, factory=<a callable "
    "returning one>), or, for a file you trust, load_model(path, trust_source=True) to run that factory"
)


def load_model(
    path: str | Path,
    *,
    model: nn.Module | None = None,
    factory: Callable[[], nn.Module] | None = None,
    trust_source: bool = False,
) -> nn.Module:
    """Loads a packed model file (``*.acz``) as a runnable module in eval mode.

    The architecture comes from the caller (``model`` or ``factory``), from the file's built-in task
    (known code), or, with ``trust_source``, from the user factory the file names. The file's
    structured-pruning history and low-rank ranks are replayed on it, every tensor's name and shape
    in the file is checked against the result, and only then are the weights decoded and loaded; the
    model computes exactly what was measured when the file was exported.

    Args:
        path: the packed file.
        model: a module of the architecture the file was made from, at its original (unpruned) shapes;
            it is copied, not changed.
        factory: a callable with no arguments returning such a module.
        trust_source: import and call the user factory the file names (only for files you trust).

    Raises:
        UsageError: when the file is missing or not a packed model, names a user model and no
            architecture was given, or does not match the architecture.
    """
    return _load(Path(path), model, factory, trust_source)[1]


def runnable_model(
    path: str | Path,
    *,
    calibration: torch.Tensor | None = None,
    runtime: str | None = None,
    threads: int | None = None,
    model: nn.Module | None = None,
    factory: Callable[[], nn.Module] | None = None,
    trust_source: bool = False,
) -> nn.Module:
    """Loads a packed model file (:func:`load_model`) and converts it for the runtime its header records, the
    runtime it was measured on (``runtime`` column of pareto.csv): an ``nn.Module`` to call in every case.

    Args:
        path: the packed file.
        calibration: representative inputs (a batch of samples), needed by int8 runtimes for their activation
            ranges; the search calibrated on the first ``evaluator.calibration_images`` training samples, so
            those reproduce its accuracy exactly.
        runtime: run on this registered runtime instead (files written before runtimes were recorded name none).
        threads: intra-op threads of ONNX Runtime (default: PyTorch's current number).
        model, factory, trust_source: the architecture, as for :func:`load_model`.

    Raises:
        UsageError: as :func:`load_model`; or when the runtime is unknown, unavailable on this machine, needs
            ``calibration``, or cannot take the model.
    """
    path = Path(path)
    header, fp32 = _load(path, model, factory, trust_source)
    name = runtime or header.runtime
    if name is None:
        raise UsageError(f"{path} records no runtime (written before runtimes were recorded); "
                         "give one, e.g. runnable_model(path, runtime='torch')")
    if name not in RUNTIMES:
        raise UsageError(f"{path}: runtime {name!r} is not registered here; use one of {', '.join(RUNTIMES.names())}")
    engine = RUNTIMES[name]
    missing = engine.unavailable()
    if missing is not None:
        raise UsageError(f"{path} runs on {name!r}, which this machine cannot run ({missing})")
    if engine.int8 and calibration is None:
        raise UsageError(f"{path} runs on {name!r}, which sets int8 activation ranges from representative inputs: "
                         "give calibration=<a batch of them>")
    shape = input_shape_of(header.meta)
    example = calibration if calibration is not None else zeros_batch(shape)
    try:
        return engine.convert(fp32, shape, threads or torch.get_num_threads(), example)
    except RuntimeConversionError as exc:
        raise UsageError(f"{path}: {exc}") from exc


def _load(
    path: Path, model: nn.Module | None, factory: Callable[[], nn.Module] | None, trust_source: bool
) -> tuple[Header, nn.Module]:
    """The file's header and its model (see :func:`load_model`)."""
    if sum((model is not None, factory is not None, bool(trust_source))) > 1:
        raise UsageError("give at most one of model=, factory= and trust_source=True")
    if not path.is_file():
        raise UsageError(f"model file {path} does not exist")
    blob = path.read_bytes()
    try:
        header = read_header(blob)
    except PackFormatError as exc:
        raise UsageError(f"{path} is not a packed model file: {exc}") from exc
    with torch.inference_mode(False):  # replaying pruning traces with autograd
        architecture = _architecture(path, header.meta.get("source"), model, factory, trust_source)
        try:
            replay_structure(architecture, header.meta)
        except UsageError as exc:
            raise UsageError(f"{path}: {exc}") from exc
    mismatch = _first_mismatch(header.shapes, architecture.state_dict())
    if mismatch:
        raise UsageError(f"{path} does not match the architecture: {mismatch} (after replaying the file's channel "
                         "pruning and low-rank layers); give the model the file was made from")
    try:
        _, state = unpack(blob)
    except PackFormatError as exc:
        raise UsageError(f"{path} is not a packed model file: {exc}") from exc
    architecture.load_state_dict(state)
    return header, architecture.eval()


def _architecture(
    path: Path, source: Any, model: nn.Module | None, factory: Callable[[], nn.Module] | None, trust_source: bool
) -> nn.Module:
    """The module the weights go into, from the caller, a built-in task or (trusted) the file's factory."""
    if model is not None:
        if not isinstance(model, nn.Module):
            raise UsageError(f"model= must be a torch.nn.Module, got {type(model).__name__}")
        return copy.deepcopy(model)
    if factory is not None:
        built = factory()
        if not isinstance(built, nn.Module):
            raise UsageError(f"factory= returned {type(built).__name__}, not a torch.nn.Module")
        return built
    if trust_source or _builtin_task(source):
        return build_architecture(source)
    named = source.get("model") if isinstance(source, dict) else source
    raise UsageError(
        f"{path} was made from the user model {str(named)[:200]!r}; loading runs no code a file names. "
        f"Give the architecture: {_ARCHITECTURE_OPTIONS}"
    )


def _builtin_task(source: Any) -> bool:
    """True when ``source`` is exactly ``{"task": <a built-in task>}`` (its code ships with this package)."""
    return isinstance(source, dict) and set(source) == {"task"} and source["task"] in TASK_NAMES


def _first_mismatch(shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, torch.Tensor]) -> str:
    """The first tensor (in file order, then the model's) whose name or shape differs; "" when all match."""
    for name, shape in shapes.items():
        if name not in expected:
            return f"the file's tensor {name!r} {list(shape)} is not in the model"
        if tuple(expected[name].shape) != shape:
            return f"tensor {name!r} is {list(shape)} in the file but {list(expected[name].shape)} in the model"
    missing = next((name for name in expected if name not in shapes), None)
    return "" if missing is None else f"the model's tensor {missing!r} is not in the file"
