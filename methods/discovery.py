"""Finds every compressible layer (a registered layer kind: convolutions, Linear, LSTM, ...) by a real forward pass."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from core.spec import LayerSpec
from methods.examples import zeros_batch
from methods.layer_kinds import LayerKind, kind_of, weight_of


def discover_layers(model: nn.Module, input_shape: Sequence[int]) -> list[LayerSpec]:
    """Runs one sample through ``model`` and describes each compressible layer it uses.

    Layers are listed in execution order; a layer never called in the forward pass is
    left out (it cannot affect the output). MACs count one sample.

    Args:
        model: the network; it is not modified.
        input_shape: shape of one sample, without the batch dimension.
    """
    specs: dict[str, LayerSpec] = {}

    def record(name: str, module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> None:
        if name not in specs:
            kind = kind_of(module)
            tensors = tuple(
                (int(t.numel()), int(t.shape[0])) for t in (weight_of(module, w.name) for w in kind.weights(module))
            )
            specs[name] = replace(
                kind.spec(name, module, inp, out), factorisable=kind.factorisable(module), tensors=tensors
            )

    trace_layers(model, input_shape, record)
    return list(specs.values())


def trace_layers(
    model: nn.Module,
    input_shape: Sequence[int],
    on_call: Callable[[str, nn.Module, torch.Tensor, torch.Tensor], None],
) -> None:
    """Runs one zero sample through ``model`` in eval mode and reports every call of a compressible layer.

    Args:
        model: the network; its mode is restored afterwards.
        input_shape: shape of one sample, without the batch dimension.
        on_call: called with (module name, module, first input, output tensor) for each call, in execution
            order; a tuple output is reported as the tensor its kind picks (``LayerKind.output_tensor``).
    """
    handles = []
    for name, module in model.named_modules():
        kind = kind_of(module)
        if kind is not None:

            def hook(
                mod: nn.Module, args: tuple, kwargs: Mapping[str, object], out: object,
                name: str = name, kind: LayerKind = kind,
            ) -> None:
                first = args[0] if args else next(iter(kwargs.values()))
                on_call(name, mod, first, kind.output_tensor(out))

            handles.append(module.register_forward_hook(hook, with_kwargs=True))
    hooked_pass(model, input_shape, handles)


def hooked_pass(model: nn.Module, input_shape: Sequence[int], handles: Sequence[RemovableHandle]) -> None:
    """Runs one zero sample through ``model`` in eval mode for the forward hooks behind ``handles``, then removes
    them and restores the model's mode.

    Args:
        model: the network; it is not modified.
        input_shape: shape of one sample, without the batch dimension.
        handles: the hooks' handles (removed even when the pass fails).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(zeros_batch(input_shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def total_macs(specs: Sequence[LayerSpec]) -> int:
    """Sum of the layers' MACs per sample."""
    return sum(spec.macs for spec in specs)
