"""Applies a policy to a model and produces the packed file that is evaluated and exported."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from methods.finetune import QUANTIZERS, CodeSpec, FinetuneSettings, masked_finetune, recalibrate_batchnorm
from methods.packing import WeightEncoding, pack, unpack
from methods.pruning import magnitude_mask
from methods.structured import History, prune_channels, replay_pruning
from search.policy import Policy

PACKED_MODEL_FORMAT = 1


@dataclass
class CompressedModel:
    """A compressed candidate: the packed bytes and the model decoded from them."""

    model: nn.Module
    """Runnable model rebuilt from ``blob`` (eval mode); what gets measured."""
    blob: bytes
    """The packed file; its length is the reported size."""
    meta: dict[str, Any]
    """The file's header metadata (source, policy, pruning history, input shape)."""

    @property
    def size_bytes(self) -> int:
        """Bytes of the packed file."""
        return len(self.blob)


@dataclass(frozen=True)
class Refinement:
    """What happens between applying the policy and packing."""

    calibration: torch.Tensor | None = None
    """Inputs for BatchNorm recalibration (``None`` skips it)."""
    finetune: FinetuneSettings = FinetuneSettings()
    """Masked quantization-aware fine-tune (0 steps skips it)."""
    train: TensorDataset | None = None
    """Training split for the fine-tune."""
    teacher: nn.Module | None = None
    """Original model whose soft targets the fine-tune distils (with ``finetune.distill_alpha`` > 0)."""


def compress(
    base: nn.Module,
    policy: Policy,
    *,
    input_shape: Sequence[int],
    source: dict[str, str],
    channel_multiple: int = 1,
    refinement: Refinement = Refinement(),
) -> CompressedModel:
    """Applies ``policy`` to a copy of ``base``: channels, then weights, then refinement, then packing.

    The returned model is decoded from the packed bytes, so what is measured is exactly
    what the file holds.
    """
    model = copy.deepcopy(base).eval()
    keep = {name: choice.keep for name, choice in policy if choice.keep < 1.0}
    history = prune_channels(model, input_shape, keep, channel_multiple)
    modules = dict(model.named_modules())
    masks: dict[str, torch.Tensor] = {}
    codes: dict[str, CodeSpec] = {}
    with torch.no_grad():
        for name, choice in policy:
            weight = modules[name].weight
            masks[name] = magnitude_mask(weight, choice.sparsity)
            codes[name] = CodeSpec(choice.bits, choice.quantizer)
            weight.copy_(QUANTIZERS[choice.quantizer](weight, masks[name], choice.bits))
    if refinement.finetune.steps > 0:
        if refinement.train is None:
            raise ValueError("a fine-tune needs the training split")
        masked_finetune(model, masks, codes, refinement.train, refinement.finetune, teacher=refinement.teacher)
    if refinement.calibration is not None:
        recalibrate_batchnorm(model, refinement.calibration)
    meta = {
        "format": PACKED_MODEL_FORMAT,
        "source": dict(source),
        "input_shape": [int(d) for d in input_shape],
        "policy": policy.to_dict(),
        "history": history,
    }
    encodings = {
        f"{name}.weight": WeightEncoding(masks[name], codes[name].bits, codes[name].quantizer) for name in masks
    }
    blob = pack(model.state_dict(), encodings, meta)
    return CompressedModel(model=decode(blob, model), blob=blob, meta=meta)


def decode(blob: bytes, architecture: nn.Module, *, replay: bool = False) -> nn.Module:
    """Loads the packed weights into ``architecture`` (in place) and returns it in eval mode.

    Args:
        blob: a packed model file's bytes.
        architecture: a module of the right shape, or of the original shape with ``replay``.
        replay: re-apply the file's structured-pruning history first.
    """
    meta, state = unpack(blob)
    if replay:
        replay_pruning(architecture, meta["input_shape"], meta.get("history", []))
    architecture.load_state_dict(state)
    return architecture.eval()


def history_of(meta: dict[str, Any]) -> History:
    """The structured-pruning history stored in a packed file's metadata."""
    return meta.get("history", [])
