"""Applies a policy to a model and produces the packed file that is evaluated and exported."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.errors import UsageError
from core.policy import FP32_BITS, LayerChoice, Policy
from core.spec import SampleShape, as_shape
from methods.finetune import CodeSpec, FinetuneSettings, masked_finetune, recalibrate_batchnorm
from methods.layer_kinds import kind_of, weight_keys, weight_of
from methods.lowrank import factor_names, factorisable, factorise_layers, full_rank, replay_factorisation
from methods.packing import RUNTIME_KEY, WeightEncoding, pack_model, unpack, verify_packed
from methods.pruning import apply_mask, lowest_mask
from methods.quantizers import check_quantizer_names, stored_weight
from methods.saliency import ScoreCache, saliency_refit, saliency_scores
from methods.streams import Data
from methods.structured import History, prune_channels, replay_pruning

PACKED_MODEL_FORMAT = 1
MAX_INPUT_ELEMENTS = 2**24
"""Largest sample a file's ``input_shape`` may give (replaying its channel pruning traces one zero sample)."""


@dataclass
class CompressedModel:
    """A compressed candidate: the packed bytes and the model holding what they decode to."""

    model: nn.Module
    """Runnable model (eval mode) holding exactly the state ``blob`` decodes to; what gets measured."""
    blob: bytes
    """The packed file; its length is the reported size."""
    meta: dict[str, Any]
    """The file's header metadata (source, policy, pruning history, input shape, runtime)."""

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
    train: Data | None = None
    """Training split for the fine-tune."""
    teacher: nn.Module | None = None
    """Original model whose soft targets the fine-tune distils (with ``finetune.distill_alpha`` > 0)."""
    saliency_data: TensorDataset | None = None
    """Training samples that score weights for the data-driven saliencies (``obd``, ``taylor``, ``net_trim``)."""
    saliency_cache: ScoreCache | None = None
    """Where data-driven saliency scores are kept between candidates cut from the same model (``None``: not
    kept)."""
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    """The fine-tune's loss (``None``: :func:`methods.objective.task_loss`)."""
    compute: torch.device | str = "cpu"
    """Where the fine-tune and the recalibration run (:mod:`methods.compute`); packing stays on the CPU."""
    initial: Mapping[str, torch.Tensor] | None = None
    """The model's untrained state, which ``finetune.rewind == "init"`` rewinds to (after the same structure
    changes as the model)."""


def pruning_schedule(rounds: int) -> list[float]:
    """Fraction of the final sparsity reached after each round: ``1 - (1 - r/R)^3`` (Zhu & Gupta, 2017).

    Pruning fast at first and slowly at the end leaves the last rounds' fine-tuning to recover.
    """
    return [1.0 - (1.0 - r / rounds) ** 3 for r in range(1, rounds + 1)]


def _masks(
    model: nn.Module,
    targets: Mapping[str, LayerChoice],
    saliency: str,
    refinement: Refinement,
    fraction: float = 1.0,
    previous: Mapping[str, torch.Tensor] | None = None,
    zeros_pruned: bool = False,
) -> dict[str, torch.Tensor]:
    """Keep-masks at ``fraction`` of each weight's sparsity, lowest saliency first, within ``previous``.

    ``targets`` and the masks are keyed by parameter name (every compressible weight of a layer gets its choice).
    With ``zeros_pruned`` (a model a learned method trained), the weights that are exactly zero are pruned first and
    stay pruned: a layer's sparsity is at least its fraction of zeros. The criterion then sets the kept weights
    where it has its own rule (Net-Trim's refit), and the pruned ones become zero.
    """
    data = refinement.saliency_data
    scores = saliency_scores(model, list(targets), saliency, data, cache=refinement.saliency_cache)
    masks = {}
    for key, choice in targets.items():
        sparsity, within = choice.sparsity * fraction, None if previous is None else previous[key]
        if zeros_pruned:
            nonzero = weight_of(model, key) != 0
            within = nonzero if within is None else within & nonzero
            zeros = (nonzero.numel() - int(nonzero.sum())) / nonzero.numel()
            sparsity = max(sparsity, min(zeros, math.nextafter(1.0, 0.0)))
        masks[key] = lowest_mask(scores[key], sparsity, within)
    saliency_refit(model, masks, saliency, data)
    for key, mask in masks.items():
        apply_mask(weight_of(model, key), mask)
    return masks


def _iterative_pruning(
    model: nn.Module, targets: Mapping[str, LayerChoice], saliency: str, refinement: Refinement, zeros_pruned: bool,
    checkpoint: Mapping[str, torch.Tensor] | None,
) -> tuple[dict[str, torch.Tensor] | None, FinetuneSettings]:
    """Prune-then-retrain rounds before the last (see :func:`pruning_schedule`), each restarting from
    ``checkpoint`` when given.

    Returns:
        The masks after the second-to-last round (``None`` with one round) and the fine-tune left for the final,
        quantization-aware round.
    """
    settings = refinement.finetune
    rounds = settings.prune_rounds if settings.steps > 0 else 1
    steps = settings.steps // rounds
    masks = None
    fp32 = {name: CodeSpec(FP32_BITS) for name in targets}
    for number, fraction in enumerate(pruning_schedule(rounds)[:-1], start=1):
        masks = _masks(model, targets, saliency, refinement, fraction, masks, zeros_pruned)
        _rewind(model, checkpoint, masks)
        round_settings = replace(settings, steps=steps, seed=settings.seed + number)
        masked_finetune(model, masks, fp32, refinement.train, round_settings, teacher=refinement.teacher,
                        loss=refinement.loss, device=refinement.compute)
    return masks, replace(settings, steps=settings.steps - steps * (rounds - 1))


def _checkpoint(
    model: nn.Module, base: nn.Module, refinement: Refinement, input_shape: Sequence[int], history: History,
    factorised: Mapping[str, int],
) -> dict[str, torch.Tensor] | None:
    """The state the rounds rewind to: ``None`` for learning-rate rewinding or without a fine-tune, the model's
    current state for ``weights``, its initial state after the model's structure changes for ``init``.

    Raises:
        ValueError: for ``init`` without the initial state.
    """
    settings = refinement.finetune
    if settings.steps == 0 or settings.rewind == "lr":
        return None
    if settings.rewind == "weights":
        return {name: value.clone() for name, value in model.state_dict().items()}
    if refinement.initial is None:
        raise ValueError("rewinding to initialisation needs the model's initial weights: only a model this tool "
                         "trained has them")
    initial = copy.deepcopy(base)
    initial.load_state_dict(refinement.initial)
    replay_pruning(initial, input_shape, history)
    replay_factorisation(initial, dict(factorised))
    return {name: value.clone() for name, value in initial.state_dict().items()}


def _rewind(model: nn.Module, checkpoint: Mapping[str, torch.Tensor] | None, masks: Mapping[str, torch.Tensor]) -> None:
    """Resets every weight and buffer to ``checkpoint`` (none: nothing changes), keeping the pruned ones at zero."""
    if checkpoint is None:
        return
    model.load_state_dict(checkpoint)
    for key, mask in masks.items():
        apply_mask(weight_of(model, key), mask)


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
    verify: bool = True,
    runtime: str | None = None,
) -> CompressedModel:
    """Applies ``policy`` to a copy of ``base``: channels, then weights, then refinement, then packing.

    A policy naming a learned method (``policy.learned``) expects ``base`` to be the model that method trained: its
    exactly-zero weights count as pruned (each layer's sparsity is a floor, see :func:`_masks`).

    ``runtime`` (the device runtime the model is measured on) is recorded in the file's header
    (:attr:`methods.packing.Header.runtime`); the file itself always holds the fp32 model.

    The returned model holds the state the packed bytes decode to, so what is measured is exactly what
    the file holds: quantized weights are rebuilt from the file's own codes and tables
    (:func:`methods.packing.pack_model`). With ``verify`` the bytes are also decoded in full (entropy
    coding, bit packing and the sparse index run backwards) and compared bit for bit.

    Raises:
        PackFormatError: with ``verify``, when the bytes do not decode to that state.
    """
    check_quantizer_names(policy)
    model = copy.deepcopy(base).eval()
    data = refinement.saliency_data
    history, factorised = _restructure(
        model, policy, input_shape, channel_multiple, policy.channel_importance,
        None if data is None else (data.tensors[0], data.tensors[1]),
    )
    targets = {
        key: choice
        for name, choice in policy
        for part in factor_names(name, factorised)
        for key in weight_keys(model, part)
    }
    if refinement.finetune.steps > 0 and refinement.train is None:
        raise ValueError("a fine-tune needs the training split")
    learned = policy.learned is not None
    checkpoint = _checkpoint(model, base, refinement, input_shape, history, factorised)
    previous, final_finetune = _iterative_pruning(model, targets, policy.saliency, refinement, learned, checkpoint)
    masks = _masks(model, targets, policy.saliency, refinement, previous=previous, zeros_pruned=learned)
    _rewind(model, checkpoint, masks)
    codes = {name: CodeSpec(choice.bits, choice.quantizer) for name, choice in targets.items()}
    with torch.no_grad():
        for name, choice in targets.items():
            weight = weight_of(model, name)
            weight.copy_(stored_weight(weight, masks[name], choice.bits, choice.quantizer))
    if final_finetune.steps > 0:
        masked_finetune(model, masks, codes, refinement.train, final_finetune, teacher=refinement.teacher,
                        loss=refinement.loss, device=refinement.compute)
    if refinement.calibration is not None:
        recalibrate_batchnorm(model, refinement.calibration, device=refinement.compute)
    meta = {
        "format": PACKED_MODEL_FORMAT,
        "source": dict(source),
        "input_shape": [int(d) for d in input_shape],
        "policy": policy.to_dict(),
        "history": history,
    }
    vocab = as_shape(input_shape).vocab
    if vocab:
        meta["input_vocab"] = vocab
    if factorised:
        meta["factorised"] = factorised
    if runtime is not None:
        meta[RUNTIME_KEY] = runtime
    encodings = {key: WeightEncoding(masks[key], codes[key].bits, codes[key].quantizer) for key in masks}
    packed = pack_model(model.state_dict(), encodings, meta)
    if verify:
        verify_packed(packed)
    model.load_state_dict(packed.state)
    return CompressedModel(model=model.eval(), blob=packed.blob, meta=meta)


def decode(blob: bytes, architecture: nn.Module, *, replay: bool = False) -> nn.Module:
    """Loads the packed weights into ``architecture`` (in place) and returns it in eval mode.

    Args:
        blob: a packed model file's bytes.
        architecture: a module of the right shape, or of the original shape with ``replay``.
        replay: re-apply the file's structured pruning and low-rank factorisation first
            (:func:`replay_structure`).
    """
    meta, state = unpack(blob)
    if replay:
        replay_structure(architecture, meta)
    architecture.load_state_dict(state)
    return architecture.eval()


def history_of(meta: dict[str, Any]) -> History:
    """The structured-pruning history stored in a packed file's metadata."""
    return meta.get("history", [])


def replay_structure(architecture: nn.Module, meta: Mapping[str, Any]) -> nn.Module:
    """Re-applies a packed file's channel pruning and low-rank factorisation to ``architecture``, in place.

    Every entry is checked against the architecture before anything is applied (a layer it has,
    channel indices within the layer, a rank within the layer's), so an edited or damaged header is
    refused instead of acted on; nothing in the header is imported or called.

    Raises:
        UsageError: when the header's history or ranks do not fit ``architecture``.
    """
    history = history_of(dict(meta))
    if history:
        input_shape = input_shape_of(meta)
        _check_history(architecture, history)
        try:
            replay_pruning(architecture, input_shape, history)
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - Torch-Pruning fails in many ways on a history that does not fit
            raise _unfit(f"its channel pruning cannot be replayed ({type(exc).__name__}: {exc})") from exc
    factorised = meta.get("factorised", {})
    _check_factorised(architecture, factorised)
    replay_factorisation(architecture, factorised)
    return architecture


def _unfit(problem: str) -> UsageError:
    return UsageError(f"the file's header does not fit the architecture: {problem}; "
                      "the file was made from another model or is damaged")


def input_shape_of(meta: Mapping[str, Any]) -> tuple[int, ...]:
    """A packed file's sample shape (``meta["input_shape"]``), checked like the rest of its header.

    Raises:
        UsageError: when it is not 1-4 positive sizes of at most ``MAX_INPUT_ELEMENTS`` elements.
    """
    shape = _checked_input_shape(meta.get("input_shape"))
    vocab = meta.get("input_vocab", 0)
    if type(vocab) is not int or not 0 <= vocab <= MAX_INPUT_ELEMENTS:
        raise _unfit(f"its input vocabulary {str(vocab)[:40]} is not an index range of at most "
                     f"{MAX_INPUT_ELEMENTS}")
    return SampleShape(shape, vocab)


def _checked_input_shape(value: Any) -> tuple[int, ...]:
    """The file's sample shape, which pruning replay traces one sample of: 1-4 positive sizes, bounded."""
    ok = isinstance(value, list) and 1 <= len(value) <= 4 and all(type(d) is int and d >= 1 for d in value)
    if not ok or math.prod(value) > MAX_INPUT_ELEMENTS:
        raise _unfit(f"its input shape {str(value)[:80]} is not 1-4 positive sizes of at most "
                     f"{MAX_INPUT_ELEMENTS} elements")
    return tuple(value)


def _history_size(module: nn.Module | None, out: bool) -> int | None:
    """Output (``out``) or input channels of a layer a history entry names: as its kind counts them (a recurrent
    or attention layer has no ``weight``), else from its ``weight``; ``None`` when it has neither."""
    kind = kind_of(module) if module is not None else None
    if kind is not None and kind.own_pruning:
        channels = kind.channels(module)
        return channels.out_channels if out else channels.in_channels
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return None
    return weight.shape[0] if out else weight.shape[1] * getattr(module, "groups", 1)


def _check_history(model: nn.Module, history: Any) -> None:
    """Every entry names a layer with weights and removes distinct channels it has."""
    modules = dict(model.named_modules())
    if not isinstance(history, list):
        raise _unfit("its pruning history is not a list")
    for number, entry in enumerate(history):
        name, out, indices = entry if isinstance(entry, list) and len(entry) == 3 else (None, None, None)
        module = modules.get(name) if isinstance(name, str) and name else None
        size = _history_size(module, out) if type(out) is bool else None
        if size is None:
            raise _unfit(f"pruning history entry {number} ({str(entry)[:80]}) names no layer of the model it can prune")
        in_range = isinstance(indices, list) and all(type(i) is int and 0 <= i < size for i in indices)
        if not in_range or len(set(indices)) != len(indices):
            raise _unfit(f"pruning history entry {number} removes channels {name!r} does not have (it has {size})")


def _check_factorised(model: nn.Module, factorised: Any) -> None:
    """Every low-rank layer is a factorisable layer of the (pruned) model, at a rank it can have."""
    if not isinstance(factorised, dict):
        raise _unfit("its low-rank layers are not a mapping")
    modules = dict(model.named_modules())
    for name, rank in factorised.items():
        module = modules.get(name) if name else None
        fits = (
            module is not None and factorisable(module) and module.weight.shape[0] > 0
            and type(rank) is int and 1 <= rank <= full_rank(module)
        )
        if not fits:
            raise _unfit(f"its low-rank layer {name!r} at rank {str(rank)[:20]} is not a layer of the model "
                         "that can have that rank")
