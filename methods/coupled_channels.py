"""The parameter slices that one channel of a channel group touches, for the learned structured methods.

A channel of a group (:mod:`methods.structured`) is an output row of every producing convolution or linear layer
(and its bias and BatchNorm entries) and an input column of every consumer. Group lasso penalises the norm of all
of these together; L0 gates multiply the output slices. A channel whose *output* slices are all exactly zero
produces zeros (for activations with ``f(0) = 0``): its input columns can be zeroed too
(:func:`silence_dead_channels`), after which every channel-importance criterion scores it zero and structured
pruning removes exactly the zeroed channels, leaving the outputs unchanged.

Groups with a layer these slices do not cover (recurrent, attention, embedding, LayerNorm, transposed or grouped
non-depthwise convolutions) are left out: their channels are neither penalised, gated nor removed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from core.errors import UsageError
from methods.structured import traced_groups


@dataclass(frozen=True)
class Slice:
    """Positions of one parameter along one dimension, each belonging to one channel of a group."""

    name: str
    """Parameter name in ``model.named_parameters()``."""
    dim: int
    """The dimension the positions index."""
    positions: torch.Tensor
    """Indices along ``dim`` (int64)."""
    channels: torch.Tensor
    """The group channel of each position (int64, same length)."""
    output: bool
    """True for a producer's output slice (weight rows, bias, BatchNorm entries), False for a consumer's input."""
    width: int
    """Entries per position (the product of the parameter's other dimensions)."""

    def per_channel(self, values: torch.Tensor, channels: int) -> torch.Tensor:
        """Sums ``values`` (one per position) into their channels."""
        total = torch.zeros(channels, dtype=values.dtype, device=values.device)
        return total.index_add(0, self.channels.to(values.device), values)


@dataclass(frozen=True)
class CoupledChannels:
    """One channel group with every parameter slice each of its channels touches."""

    leader: str
    """The group's leader (whose policy ``keep`` sets its width)."""
    channels: int
    """Channels in the group."""
    slices: tuple[Slice, ...]
    """The slices, outputs first."""
    buffers: tuple[Slice, ...] = ()
    """Per-channel buffers (BatchNorm running statistics), named in ``model.named_buffers()``; moved along with the
    slices by :meth:`permute`."""

    def squares(self, params: Mapping[str, torch.Tensor], outputs_only: bool = False) -> torch.Tensor:
        """Per channel, the sum of squares of its slices (differentiable)."""
        total = torch.zeros(self.channels)
        for part in self.slices:
            if outputs_only and not part.output:
                continue
            param = params[part.name]
            values = param.index_select(part.dim, part.positions.to(param.device))
            per_position = values.pow(2).transpose(0, part.dim).reshape(len(part.positions), -1).sum(1)
            total = total.to(per_position) + part.per_channel(per_position, self.channels)
        return total

    def sizes(self, outputs_only: bool = False) -> torch.Tensor:
        """Per channel, the number of parameter entries its slices hold (all, or the output slices only)."""
        total = torch.zeros(self.channels)
        for part in self.slices:
            if not outputs_only or part.output:
                total += part.per_channel(torch.full((len(part.positions),), float(part.width)), self.channels)
        return total

    def scale(self, params: Mapping[str, torch.Tensor], factors: torch.Tensor, outputs_only: bool = False) -> None:
        """Multiplies every slice of channel ``c`` by ``factors[c]``, in place, without autograd."""
        with torch.no_grad():
            for part in self.slices:
                if outputs_only and not part.output:
                    continue
                param = params[part.name]
                positions = part.positions.to(param.device)
                shape = [1] * param.dim()
                shape[part.dim] = len(part.positions)
                factor = factors.to(param)[part.channels.to(param.device)].reshape(shape)
                param.index_copy_(part.dim, positions, param.index_select(part.dim, positions) * factor)

    def dead(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Channels whose output slices are all exactly zero (bool per channel)."""
        return self.squares(params, outputs_only=True) == 0

    def l1(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per channel, the L1 norm of its input slices (the consumers' columns: once-for-all's channel importance),
        or of its output slices in a group without consumers."""
        inputs = [part for part in self.slices if not part.output] or list(self.slices)
        total = torch.zeros(self.channels)
        with torch.no_grad():
            for part in inputs:
                param = params[part.name]
                values = param.index_select(part.dim, part.positions.to(param.device)).abs()
                per_position = values.transpose(0, part.dim).reshape(len(part.positions), -1).sum(1).cpu()
                total += part.per_channel(per_position.to(total), self.channels)
        return total

    def permute(self, model: nn.Module, order: torch.Tensor) -> None:
        """Reorders the group's channels in place: channel ``c`` afterwards holds what channel ``order[c]`` held, on
        every slice and buffer (the network computes the same function).

        Raises:
            ValueError: when ``order`` is not a permutation of the channels, or a slice gives its channels unequal
                numbers of positions.
        """
        order = torch.as_tensor(order, dtype=torch.int64)
        if sorted(order.tolist()) != list(range(self.channels)):
            raise ValueError(f"group {self.leader!r}: order must be a permutation of its {self.channels} channels")
        tensors = dict(model.named_parameters()) | dict(model.named_buffers())
        with torch.no_grad():
            for part in (*self.slices, *self.buffers):
                tensor = tensors[part.name]
                target, source = _moved_positions(part, order, self.channels, self.leader)
                target, source = target.to(tensor.device), source.to(tensor.device)
                tensor.index_copy_(part.dim, target, tensor.index_select(part.dim, source))


def _moved_positions(part: Slice, order: torch.Tensor, channels: int, leader: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions of ``part`` and, for each, the position whose value it takes when channel ``c`` takes channel
    ``order[c]``'s values (a channel's positions matched in ascending order)."""
    counts = torch.bincount(part.channels, minlength=channels)
    if bool((counts != counts[0]).any()):
        raise ValueError(f"group {leader!r}: {part.name} gives its channels unequal numbers of positions")
    ranked = torch.argsort(part.channels * (int(part.positions.max()) + 1) + part.positions)
    grid = part.positions[ranked].reshape(channels, -1)
    return grid.flatten(), grid[order].flatten()


def _norm_buffers(module: nn.Module, prefix: str, idxs: Sequence[int], roots: Sequence[int]) -> list[Slice]:
    """The running statistics of a BatchNorm output item, as slices of its buffers."""
    if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.running_mean is None:
        return []
    positions = torch.tensor(list(idxs), dtype=torch.int64)
    channels = torch.tensor(list(roots), dtype=torch.int64)
    return [Slice(f"{prefix}{name}", 0, positions, channels, True, 1) for name in ("running_mean", "running_var")]


def _layer_slices(
    module: nn.Module, prefix: str, output: bool, idxs: Sequence[int], roots: Sequence[int]
) -> list[Slice] | None:
    """The slices of one group item, ``[]`` for a parameter-free module, ``None`` for a module not covered."""
    positions = torch.tensor(list(idxs), dtype=torch.int64)
    channels = torch.tensor(list(roots), dtype=torch.int64)

    def part(name: str, dim: int) -> Slice:
        param = getattr(module, name)
        width = param.numel() // max(1, param.shape[dim])
        return Slice(f"{prefix}{name}", dim, positions, channels, output, width)

    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return None
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        if output:
            return [part("weight", 0)] + ([part("bias", 0)] if module.bias is not None else [])
        if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
            # a depthwise conv's inputs are its outputs: its output slice covers them
            return [] if module.groups == module.in_channels == module.out_channels else None
        return [part("weight", 1)]
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return [part("weight", 0), part("bias", 0)] if module.affine else []
    if not any(True for _ in module.parameters(recurse=False)):
        return []
    return None


def coupled_channels(model: nn.Module, input_shape: Sequence[int], leaders: Sequence[str]) -> list[CoupledChannels]:
    """The groups led by ``leaders`` (the checked groups: :attr:`envs.evaluator.Evaluator.leaders`) whose every
    layer these slices cover, each with its slices; ``[]`` when the model's channels cannot be traced."""
    try:
        traced = traced_groups(model, input_shape)
    except UsageError:
        return []
    names = {module: name for name, module in model.named_modules()}
    wanted = set(leaders)
    found = []
    for group, items in traced:
        if group.leader not in wanted or group.unit != 1:
            continue
        parts: list[Slice] = []
        buffers: list[Slice] = []
        for module, output, idxs, roots in items:
            prefix = f"{names[module]}." if names.get(module) else ""
            got = _layer_slices(module, prefix, output, idxs, roots)
            if got is None:
                break
            parts.extend(got)
            if output:
                buffers.extend(_norm_buffers(module, prefix, idxs, roots))
        else:
            unique = {(p.name, p.dim, tuple(p.positions.tolist())): p for p in parts}
            ordered = sorted(unique.values(), key=lambda p: not p.output)
            kept = tuple({(b.name, tuple(b.positions.tolist())): b for b in buffers}.values())
            if any(p.output for p in ordered):
                found.append(CoupledChannels(group.leader, group.channels, tuple(ordered), kept))
    return found


def silence_dead_channels(model: nn.Module, groups: Sequence[CoupledChannels]) -> dict[str, int]:
    """Zeroes the input columns of every channel whose output slices are all zero (an exact no-op on the outputs
    for activations with ``f(0) = 0``); returns the number of dead channels per leader."""
    params = dict(model.named_parameters())
    dead = {}
    for group in groups:
        mask = group.dead(params)
        group.scale(params, (~mask).to(torch.float32))
        dead[group.leader] = int(mask.sum())
    return dead
