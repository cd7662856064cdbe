"""User-supplied models, weights and data: import factories, validate, explain errors.

Every problem with the user's input becomes a ``UsageError`` with a one-line message
that says what is wrong and how to fix it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import pickle
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.errors import UsageError
from envs.tasks.data import Splits, materialize_splits, probe
from methods.streams import head

_FORMAT_HINT = "use FILE.py:FACTORY or package.module:FACTORY"
_SAVE_HINT = "save it with torch.save(model.state_dict(), PATH)"


def one_line(exc: BaseException, limit: int = 200) -> str:
    """``"ErrorType: first line of the message"``, shortened to ``limit`` characters."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class FactoryRef:
    """A parsed ``FILE.py:factory`` or ``package.module:factory`` reference."""

    location: str
    """Absolute ``.py`` path, or a dotted module name."""
    attr: str
    """Name of the factory inside the file or module."""
    is_file: bool
    """Whether ``location`` is a file path."""

    @property
    def source(self) -> str:
        """Canonical ``location:attr`` string, stable across working directories."""
        return f"{self.location}:{self.attr}"

    @property
    def display(self) -> str:
        """Short human-readable form (file name instead of the absolute path)."""
        return f"{Path(self.location).name if self.is_file else self.location}:{self.attr}"


def parse_factory(spec: str, what: str = "model") -> FactoryRef:
    """Parse ``FILE.py:factory`` or ``package.module:factory`` (files must exist).

    Raises:
        UsageError: Malformed reference or missing file.
    """
    location, sep, attr = str(spec).strip().rpartition(":")
    if not sep or not location or not attr.isidentifier():
        raise UsageError(f"{what} factory {spec!r} is malformed; {_FORMAT_HINT}")
    if location.endswith(".py"):
        path = Path(location).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"{what} factory file {location!r} does not exist; check the path ({_FORMAT_HINT})")
        return FactoryRef(str(path), attr, True)
    if not all(part.isidentifier() for part in location.split(".")):
        raise UsageError(
            f"{what} factory {spec!r}: {location!r} is neither a .py file nor a module name; {_FORMAT_HINT}"
        )
    return FactoryRef(location, attr, False)


@contextlib.contextmanager
def _sys_path(directory: str) -> Iterator[None]:
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    try:
        yield
    finally:
        if added and directory in sys.path:
            sys.path.remove(directory)


def _import(ref: FactoryRef, what: str) -> object:
    if ref.is_file:
        digest = hashlib.sha1(ref.location.encode()).hexdigest()[:12]
        name = f"_autocompress_user_{Path(ref.location).stem}_{digest}"
        spec = importlib.util.spec_from_file_location(name, ref.location)
        if spec is None or spec.loader is None:
            raise UsageError(f"{what} factory file {ref.location!r} cannot be imported as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            with _sys_path(str(Path(ref.location).parent)):
                spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise UsageError(
                f"importing {what} factory file {ref.location!r} failed with {one_line(exc)}; fix that file"
            ) from exc
        return module
    try:
        with _sys_path(str(Path.cwd())):
            return importlib.import_module(ref.location)
    except ModuleNotFoundError as exc:
        if exc.name and (ref.location + ".").startswith(exc.name + "."):
            raise UsageError(
                f"{what} factory module {ref.location!r} not found; check the spelling, "
                "run from its parent directory or add it to PYTHONPATH"
            ) from exc
        raise UsageError(
            f"importing {what} factory module {ref.location!r} failed with {one_line(exc)}; "
            "install the missing dependency"
        ) from exc
    except Exception as exc:
        raise UsageError(
            f"importing {what} factory module {ref.location!r} failed with {one_line(exc)}; fix that module"
        ) from exc


def resolve_factory(ref: FactoryRef, what: str = "model") -> Callable[[], object]:
    """Import the file or module of ``ref`` and return its factory callable.

    Raises:
        UsageError: Import failure, missing attribute or non-callable attribute.
    """
    module = _import(ref, what)
    factory = getattr(module, ref.attr, None)
    if factory is None:
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))[:8]
        raise UsageError(
            f"{what} factory {ref.display!r}: {ref.attr!r} is not defined there "
            f"(callables found: {', '.join(names) or 'none'}); fix the name after ':'"
        )
    if not callable(factory):
        raise UsageError(
            f"{what} factory {ref.display!r}: {ref.attr!r} is of type "
            f"{type(factory).__name__}, not a function; point to a function taking no arguments"
        )
    return factory


def call_factory(ref: FactoryRef, what: str = "model") -> object:
    """Resolve ``ref`` and call the factory with no arguments.

    Raises:
        UsageError: Resolution failed or the factory raised.
    """
    factory = resolve_factory(ref, what)
    try:
        with _sys_path(str(Path(ref.location).parent)) if ref.is_file else contextlib.nullcontext():
            return factory()
    except Exception as exc:
        raise UsageError(
            f"{what} factory {ref.display!r} raised {one_line(exc)} when called with no arguments; fix the factory"
        ) from exc


def build_user_model(ref: FactoryRef) -> nn.Module:
    """Call a user model factory and check that it returns an ``nn.Module``."""
    model = call_factory(ref, "model")
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"model factory {ref.display!r} returned {type(model).__name__}, not a "
            "torch.nn.Module; return the model instance"
        )
    return model


def load_user_data(spec: str) -> Splits:
    """Call a user data factory and materialise its (train, val, test) datasets."""
    ref = parse_factory(spec, "data")
    result = call_factory(ref, "data")
    return materialize_splits(result, f"data factory {ref.display!r}")


def code_fingerprint(ref: FactoryRef) -> str:
    """SHA-256 prefix of the file defining the factory ("" when it cannot be read)."""
    try:
        path = ref.location if ref.is_file else inspect.getsourcefile(resolve_factory(ref))
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path else ""
    except (OSError, TypeError):
        return ""


def state_dict_problems(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable key and shape mismatches between ``state`` and ``model``."""
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} in file vs {tuple(v.shape)} in model"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{label} {', '.join(items[:3])}{more}")
    return problems


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)``, checked to be a ``{str: Tensor}`` mapping.

    Raises:
        UsageError: File missing, unreadable, refused by ``weights_only`` or not a state_dict.
    """
    if not path.is_file():
        raise UsageError(f"weights file '{path}' does not exist; check the path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc):
            raise UsageError(
                f"weights file '{path}' is not a plain state_dict (torch.load with weights_only=True "
                f"refused an object in it, e.g. a pickled whole model); {_SAVE_HINT}"
            ) from exc
        raise UsageError(
            f"weights file '{path}' cannot be read ({one_line(exc, 120)}); it is corrupt or not a "
            f"torch file; {_SAVE_HINT}"
        ) from exc
    if not isinstance(state, Mapping):
        raise UsageError(f"weights file '{path}' holds a {type(state).__name__}, not a state_dict; {_SAVE_HINT}")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            hint = " (looks like a checkpoint; save its model state_dict instead)"
            raise UsageError(
                f"weights file '{path}' is not a state_dict: entry {key!r} is a "
                f"{type(value).__name__}, not a tensor{hint if isinstance(value, Mapping) else ''}"
                f"; {_SAVE_HINT}"
            )
    return dict(state)


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a state_dict file into ``model`` (strict keys and shapes).

    Raises:
        UsageError: Unreadable file, not a state_dict, or keys/shapes that do not match.
    """
    path = Path(weights).expanduser()
    state = read_state_dict(path)
    problems = state_dict_problems(model, state)
    if problems:
        raise UsageError(
            f"weights file '{path}' does not match the model: {'; '.join(problems)}; "
            "use weights saved from this exact architecture"
        )
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise UsageError(
            f"weights file '{path}' cannot be loaded into the model ({one_line(exc, 120)}); "
            "use weights saved from this exact architecture"
        ) from exc


def check_fit(model: nn.Module, splits: Splits, sample_count: int = 8) -> int:
    """Run a small batch through ``model`` and return its number of output classes (0 for float targets).

    Integer targets need class scores in the outputs' last dim: ``(N, C)`` logits for ``(N,)`` labels, or
    ``(N, T, C)`` for a label per position ``(N, T)``; float targets need outputs of their shape.

    Raises:
        UsageError: The forward pass fails, the outputs do not fit the targets, or ``C`` is not larger than the
            largest label.
    """
    inputs, targets = head(splits[0], sample_count).tensors
    batch = tuple(inputs.shape)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model(inputs)
    except Exception as exc:
        raise UsageError(
            f"the model cannot process the data: a forward pass on a batch of shape {batch} "
            f"raised {one_line(exc, 160)}; make the data's sample shape match the model's input"
        ) from exc
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    wanted = tuple(targets.shape)
    if targets.dtype.is_floating_point:
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != wanted:
            raise UsageError(
                f"the model returned {shape} for a batch of shape {batch} but the targets are float {wanted}; "
                "a regression model must return outputs of the targets' shape"
            )
        return 0
    if not isinstance(out, torch.Tensor) or out.dim() != targets.dim() + 1 or tuple(out.shape[:-1]) != wanted:
        expected = "(N, C) class logits" if targets.dim() == 1 else f"class scores of shape {wanted} + (C,)"
        raise UsageError(f"the model returned {shape} for a batch of shape {batch}; it must return {expected}")
    max_label = max(int(probe(d).tensors[1].max()) for d in splits)
    classes = int(out.shape[-1])
    if classes <= max_label:
        raise UsageError(
            f"the model outputs {classes} classes but the data has label {max_label}; "
            f"make the model output at least {max_label + 1} logits or fix the labels"
        )
    return classes
