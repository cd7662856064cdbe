"""Applies a policy to a model and produces the packed file that is evaluated and exported."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.policy import FP32_BITS, LayerChoice, Policy
from methods.finetune import CodeSpec, FinetuneSettings, masked_finetune, recalibrate_batchnorm
from methods.lowrank import factor_names, factorise_layers, replay_factorisation
from methods.packing import WeightEncoding, pack, unpack
from methods.pruning import apply_mask, lowest_mask
from methods.quantizers import check_quantizer_names, stored_weight
from methods.saliency import saliency_scores
from methods.structured import History, prune_channels, replay_pruning

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
    saliency_data: TensorDataset | None = None
    """Training samples that score weights for the ``obd`` and ``taylor`` saliencies."""


def pruning_schedule(rounds: int) -> list[float]:
    """Fraction of the final sparsity reached after each round: ``1 - (1 - r/R)^3`` (Zhu & Gupta, 2017).

    Pruning fast at first and slowly at the end leaves the last rounds' fine-tuning to recover.
    """
    return [1.0 - (1.0 - r / rounds) ** 3 for r in range(1, rounds + 1)]


def _masks(
    model: nn.Module,
    targets: Mapping[str, LayerChoice],
    saliency: str,
    data: TensorDataset | None,
    fraction: float = 1.0,
    previous: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep-masks at ``fraction`` of each layer's sparsity, lowest saliency first, within ``previous``."""
    scores = saliency_scores(model, list(targets), saliency, data)
    masks = {
        name: lowest_mask(scores[name], choice.sparsity * fraction, None if previous is None else previous[name])
        for name, choice in targets.items()
    }
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        apply_mask(modules[name].weight, mask)
    return masks


def _iterative_pruning(
    model: nn.Module, targets: Mapping[str, LayerChoice], saliency: str, refinement: Refinement
) -> tuple[dict[str, torch.Tensor] | None, FinetuneSettings]:
    """Prune-then-retrain rounds before the last (see :func:`pruning_schedule`).

    Returns:
        The masks after the second-to-last round (``None`` with one round) and the fine-tune left
        for the final, quantization-aware round.
    """
    settings = refinement.finetune
    rounds = settings.prune_rounds if settings.steps > 0 else 1
    steps = settings.steps // rounds
    masks = None
    fp32 = {name: CodeSpec(FP32_BITS) for name in targets}
    for number, fraction in enumerate(pruning_schedule(rounds)[:-1], start=1):
        masks = _masks(model, targets, saliency, refinement.saliency_data, fraction, masks)
        round_settings = replace(settings, steps=steps, seed=settings.seed + number)
        masked_finetune(model, masks, fp32, refinement.train, round_settings, teacher=refinement.teacher)
    return masks, replace(settings, steps=settings.steps - steps * (rounds - 1))


def _restructure(
    model: nn.Module,
    policy: Policy,
    input_shape: Sequence[int],
    channel_multiple: int,
    importance: str,
    data: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[History, dict[str, int]]:
    """Removes the policy's channels from ``model`` in place, then factorises its low-rank layers."""
    unknown = sorted({name for name, _ in policy} - {name for name, _ in model.named_modules()})
    if unknown:
        raise ValueError(f"the policy names layers the model does not have: {', '.join(unknown)}")
    keep = {name: choice.keep for name, choice in policy if choice.keep < 1.0}
    history = prune_channels(model, input_shape, keep, channel_multiple, importance=importance, data=data)
    factorised = factorise_layers(model, {name: choice.rank for name, choice in policy if choice.rank < 1.0})
    return history, factorised


def architecture(base: nn.Module, policy: Policy, input_shape: Sequence[int], channel_multiple: int = 1) -> nn.Module:
    """A copy of ``base`` with the layer shapes ``policy`` gives it (kept channels, low-rank factors).

    Only the shapes are meaningful (channels are chosen by L1 magnitude, weights are neither pruned
    nor quantized), which is all a latency model needs.
    """
    model = copy.deepcopy(base).eval()
    _restructure(model, policy, input_shape, channel_multiple, "l1", None)
    return model


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
    check_quantizer_names(policy)
    model = copy.deepcopy(base).eval()
    data = refinement.saliency_data
    history, factorised = _restructure(
        model, policy, input_shape, channel_multiple, policy.channel_importance,
        None if data is None else (data.tensors[0], data.tensors[1]),
    )
    targets = {part: choice for name, choice in policy for part in factor_names(name, factorised)}
    if refinement.finetune.steps > 0 and refinement.train is None:
        raise ValueError("a fine-tune needs the training split")
    previous, final_finetune = _iterative_pruning(model, targets, policy.saliency, refinement)
    masks = _masks(model, targets, policy.saliency, refinement.saliency_data, previous=previous)
    codes = {name: CodeSpec(choice.bits, choice.quantizer) for name, choice in targets.items()}
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, choice in targets.items():
            weight = modules[name].weight
            weight.copy_(stored_weight(weight, masks[name], choice.bits, choice.quantizer))
    if final_finetune.steps > 0:
        masked_finetune(model, masks, codes, refinement.train, final_finetune, teacher=refinement.teacher)
    if refinement.calibration is not None:
        recalibrate_batchnorm(model, refinement.calibration)
    meta = {
        "format": PACKED_MODEL_FORMAT,
        "source": dict(source),
        "input_shape": [int(d) for d in input_shape],
        "policy": policy.to_dict(),
        "history": history,
    }
    if factorised:
        meta["factorised"] = factorised
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
        replay: re-apply the file's structured pruning and low-rank factorisation first.
    """
    meta, state = unpack(blob)
    if replay:
        replay_pruning(architecture, meta["input_shape"], meta.get("history", []))
        replay_factorisation(architecture, meta.get("factorised", {}))
    architecture.load_state_dict(state)
    return architecture.eval()


def history_of(meta: dict[str, Any]) -> History:
    """The structured-pruning history stored in a packed file's metadata."""
    return meta.get("history", [])
