"""Finds every compressible layer (Conv2d, Linear) with a real forward pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from core.spec import LayerSpec


def _spec(name: str, module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> LayerSpec:
    params = int(module.weight.numel())
    if isinstance(module, nn.Conv2d):
        out_hw = int(out.shape[-1]) if out.dim() == 4 else 1
        out_positions = int(out[0, 0].numel()) if out.dim() == 4 else 1
        depthwise = module.groups > 1 and module.groups == module.in_channels
        return LayerSpec(
            name=name,
            kind="depthwise" if depthwise else "conv",
            in_channels=module.in_channels,
            out_channels=module.out_channels,
            kernel=int(module.kernel_size[0]),
            stride=int(module.stride[0]),
            groups=int(module.groups),
            input_hw=int(inp.shape[-1]),
            output_hw=out_hw,
            params=params,
            macs=params * out_positions,
        )
    positions = int(out[0].numel() // module.out_features) if out.dim() > 1 else 1
    return LayerSpec(
        name=name,
        kind="linear",
        in_channels=module.in_features,
        out_channels=module.out_features,
        kernel=1,
        stride=1,
        groups=1,
        input_hw=1,
        output_hw=1,
        params=params,
        macs=params * positions,
    )


def discover_layers(model: nn.Module, input_shape: Sequence[int]) -> list[LayerSpec]:
    """Runs one sample through ``model`` and describes each Conv2d and Linear it uses.

    Layers are listed in execution order; a layer never called in the forward pass is
    left out (it cannot affect the output). MACs count one sample.

    Args:
        model: the network; it is not modified.
        input_shape: shape of one sample, without the batch dimension.
    """
    specs: dict[str, LayerSpec] = {}

    def record(name: str, module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> None:
        if name not in specs:
            specs[name] = _spec(name, module, inp, out)

    trace_layers(model, input_shape, record)
    return list(specs.values())


def trace_layers(
    model: nn.Module,
    input_shape: Sequence[int],
    on_call: Callable[[str, nn.Module, torch.Tensor, torch.Tensor], None],
) -> None:
    """Runs one zero sample through ``model`` in eval mode and reports every Conv2d/Linear call.

    Args:
        model: the network; its mode is restored afterwards.
        input_shape: shape of one sample, without the batch dimension.
        on_call: called with (module name, module, input, output) for each call, in execution order.
    """
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):

            def hook(mod: nn.Module, args: tuple, out: torch.Tensor, name: str = name) -> None:
                on_call(name, mod, args[0], out)

            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def total_macs(specs: Sequence[LayerSpec]) -> int:
    """Sum of the layers' MACs per sample."""
    return sum(spec.macs for spec in specs)
