"""Evaluates a policy on a task: compress, then measure accuracy, packed size and latency."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.paths import default_cache_dir
from core.policy import LayerChoice, Policy
from core.result import Result
from core.spec import LayerSpec
from envs.latency_model import LatencyPredictor, build_predictor
from envs.learned_bases import LearnedBases
from envs.profile import DeviceProfile
from envs.runtimes import runnable_for
from envs.runtimes.eager import TorchEager
from envs.tasks import Task, evaluate
from envs.timing import MAX_ROUNDS, Latency, Paired, measure, measure_paired
from envs.timing_worker import SETTINGS_TEXT as TIMING_WORKER_TEXT
from envs.timing_worker import TimingWorker
from methods.compute import compute_device
from methods.discovery import discover_layers, total_macs
from methods.finetune import FinetuneSettings, has_batchnorm
from methods.hypernetwork import generated_macs
from methods.layer_kinds import weight_keys
from methods.packing import RUNTIME_KEY
from methods.pipeline import CompressedModel, Refinement, architecture, compress
from methods.saliency import ScoreCache
from methods.streams import Data, head, subset
from methods.structured import channel_groups

LATENCY_MODES = ("measured", "predicted")
TIMING_MODES = ("worker", "inline")
"""Where latencies are measured: a separate timing process, or the searching process itself."""
REFERENCE_KEEP = 0.25
"""The reference model of paired timing is the task's model with this fraction of every layer's channels."""


def _architecture_key(model: nn.Module) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The parameter names and shapes of ``model``, by name (a decoded model may register them in another order):
    dense models with equal keys run the same kernels."""
    return tuple(sorted((name, tuple(p.shape)) for name, p in model.named_parameters()))


@dataclass(frozen=True)
class LatencyCheck:
    """A candidate architecture whose latency was both predicted and measured."""

    predicted_ms: float
    """The latency model's prediction."""
    measured_ms: float
    """The real run on the device."""

    @property
    def relative_error(self) -> float:
        """``|predicted - measured| / measured``."""
        return abs(self.predicted_ms - self.measured_ms) / self.measured_ms


FinetuneKeys = tuple[tuple[str, str], ...]
"""``(config.yaml key, FinetuneSettings field)`` pairs: the fine-tune fields that a settings section exposes."""


def check_exposed(finetune: FinetuneSettings, keys: FinetuneKeys, section: str) -> None:
    """Refuses a fine-tune that sets a field ``keys`` does not expose (config.yaml could not record it).

    Raises:
        ValueError: naming the fields that must keep their defaults.
    """
    exposed = {name for _, name in keys}
    default = FinetuneSettings()
    fixed = [f.name for f in fields(FinetuneSettings)
             if f.name not in exposed and getattr(finetune, f.name) != getattr(default, f.name)]
    if fixed:
        raise ValueError(f"the {section} fine-tune sets only {', '.join(sorted(exposed))}; "
                         f"{', '.join(fixed)} must keep the default")


SCREEN_STEPS = 8
"""Default fine-tune steps of every candidate (the screening fidelity)."""
SCREEN_LR = 1e-3
"""Default learning rate of that fine-tune."""


@dataclass(frozen=True)
class EvaluatorSettings:
    """How much work goes into each candidate."""

    FINETUNE_KEYS: ClassVar[FinetuneKeys] = (("finetune_steps", "steps"), ("finetune_lr", "lr"))
    """config.yaml keys of :attr:`finetune`'s fields (the file keeps these flat keys)."""

    bn_recalibration: bool = True
    """Recalibrate BatchNorm statistics on training images after compression."""
    calibration_images: int = 500
    """Training images used for BatchNorm recalibration."""
    finetune: FinetuneSettings = field(default_factory=lambda: FinetuneSettings(steps=SCREEN_STEPS, lr=SCREEN_LR))
    """Masked quantization-aware fine-tune of each candidate, the screening fidelity: ``steps``
    (``finetune_steps``, 0 = none) and ``lr`` (``finetune_lr``); its other fields keep their defaults. A
    short one ranks heavily pruned candidates as the final fine-tune does, where none reads near chance
    (``benchmarks/proxy_fidelity.py``)."""
    saliency_images: int = 256
    """Training images that score weights for the ``obd`` and ``taylor`` pruning saliencies."""
    val_samples: int = 2000
    """Validation samples every candidate is scored on: all of a smaller split, else a fixed subset drawn with
    ``val_seed`` (the first ones of a stream read in its own order). The test split is always read in full."""
    val_seed: int = 0
    """Seed of that subset."""
    latency: str = "measured"
    """``measured``: run every new architecture on the device; ``predicted``: the device's latency
    lookup table (``envs/latency_model.py``), checked against a real run every ``latency_check_every``
    new architectures. Exported models are always measured."""
    latency_check_every: int = 5
    """With predicted latency, every this-many-th new architecture is also measured, to report the error."""
    timing: str = "worker"
    """Where latencies are measured: ``worker``, a separate long-lived process that only times models
    (``envs/timing_worker.py``), as a deployment runs them; or ``inline``, in the searching process."""
    paired_timing: bool = True
    """Time every model in rounds alternated with rounds of a fixed reference model and report the median
    ratio times the reference's fastest round of the run (``envs/timing.py``): on a shared machine whose
    speed changes for seconds at a time, a model then measures the same whenever it is timed. Off: the
    minimum of the model's own round medians."""
    promote_top: float = 0.2
    """Multi-fidelity evaluation (``search/fidelity.py``): a within-budget candidate whose screening accuracy
    (after ``finetune_steps``) ranks in this top fraction of the run's within-budget candidates so far is
    fine-tuned again for ``promote_steps`` and scored on that; 0 = every candidate gets the screening only."""
    promote_steps: int = 30
    """Fine-tune steps of a promoted candidate."""
    promote_lr: float = 1e-3
    """Adam learning rate of that fine-tune."""
    decode_check_every: int = 20
    """Every this-many-th candidate (the first included) is also decoded from its packed bytes in full and
    compared bit for bit with the model that is measured; exported models always are."""

    def __post_init__(self) -> None:
        if self.calibration_images < 1:
            raise ValueError("calibration_images must be at least 1")
        check_exposed(self.finetune, self.FINETUNE_KEYS, "evaluator")
        if self.saliency_images < 1:
            raise ValueError("saliency_images must be at least 1")
        if self.val_samples < 1 or self.val_seed < 0:
            raise ValueError("val_samples must be at least 1 and val_seed at least 0")
        if self.latency not in LATENCY_MODES:
            raise ValueError(f"latency must be one of {LATENCY_MODES}, got {self.latency!r}")
        if self.latency_check_every < 1:
            raise ValueError("latency_check_every must be at least 1")
        if self.timing not in TIMING_MODES:
            raise ValueError(f"timing must be one of {TIMING_MODES}, got {self.timing!r}")
        if self.decode_check_every < 1:
            raise ValueError("decode_check_every must be at least 1")
        if not 0.0 <= self.promote_top <= 1.0:
            raise ValueError("promote_top must be in [0, 1] (0 = no promotion)")
        if self.promote_steps < 1 or not self.promote_lr > 0:
            raise ValueError("promote_steps must be at least 1 and promote_lr positive")

    @property
    def promotion(self) -> FinetuneSettings:
        """The fine-tune of a promoted candidate."""
        return replace(self.finetune, steps=self.promote_steps, lr=self.promote_lr)


class Evaluator:
    """Measures candidates of one task on one device; results are cached by policy hash."""

    def __init__(
        self, task: Task, device: DeviceProfile, settings: EvaluatorSettings = EvaluatorSettings(), compute: str = "cpu"
    ):
        self.task = task
        self.device = device
        self.settings = settings
        self.compute = compute_device(compute)
        """Where fine-tunes, BatchNorm recalibration and the eager model's metric run (not the latency)."""
        self.val_data: TensorDataset = subset(task.val, settings.val_samples, settings.val_seed)
        """The fixed validation subset every candidate is scored on (``settings.val_samples``)."""
        self.calibration_inputs: torch.Tensor = head(task.train, settings.calibration_images).tensors[0]
        """Training inputs for BatchNorm recalibration and int8 activation ranges (a bounded number)."""
        self._saliency_data = head(task.train, settings.saliency_images)
        self._saliency_cache = ScoreCache()
        self.layers: list[LayerSpec] = discover_layers(task.model, task.input_shape)
        self.groups = channel_groups(task.model, task.input_shape)
        self.learned = LearnedBases(task, self.layer_names, self.leaders, self.compute, device.channel_multiple)
        """The task's model after each learned-sparsity method a policy names (trained once per method)."""
        self.learned_default: str | None = None
        """The learned method every candidate that names none starts from (a run's ``export.learned``)."""
        self._cache: dict[str, Result] = {}
        self._compressed = 0
        """Candidates compressed by :meth:`evaluate` so far (every ``decode_check_every``-th is decoded in full)."""
        self._latency_by_shape: dict[tuple, Latency] = {}
        """Latencies by (runtime, architecture): dense models of equal shapes on one runtime run the same kernels."""
        self._timing_worker: TimingWorker | None = None
        self._reference: nn.Module | None = None
        self._reference_runnables: dict[str, nn.Module] = {}
        self.anchors: dict[str, float] = {}
        """Per runtime, the fastest round of the paired-timing reference seen so far (ms)."""
        self.latency_target_ms: float | None = None
        """The run's latency target: measurements near it are confirmed by a second one (see :meth:`latency`)."""
        self._layers_by_shape: dict[tuple, tuple[int, list[str]]] = {}
        self._predictors: dict[str, LatencyPredictor] = {}
        self.latency_checks: list[LatencyCheck] = []
        """Predicted-and-measured pairs collected while searching with predicted latency."""

    @property
    def layer_names(self) -> list[str]:
        """Compressible layers in execution order."""
        return [spec.name for spec in self.layers]

    @property
    def leaders(self) -> list[str]:
        """Layers whose keep ratio sets a channel group's width."""
        return [group.leader for group in self.groups]

    def remember(self, policy: Policy, result: Result) -> None:
        """Seeds the cache with an earlier measurement (used when resuming)."""
        self._cache[policy.digest()] = result

    def refinement(self, finetune: FinetuneSettings = FinetuneSettings()) -> Refinement:
        """BatchNorm recalibration plus ``finetune`` (distilling the task's model when its alpha > 0)."""
        calibration = None
        if self.settings.bn_recalibration and has_batchnorm(self.task.model):
            calibration = self.calibration_inputs
        return Refinement(
            calibration=calibration,
            finetune=finetune,
            train=self.task.train,
            teacher=self.task.model if finetune.distill_alpha > 0 else None,
            loss=self.task.loss,
            compute=self.compute,
            saliency_data=self._saliency_data,
            saliency_cache=self._saliency_cache,
            initial=self.task.initial,
        )

    def compress(self, policy: Policy, refinement: Refinement | None = None, verify: bool = True,
                 from_learned: bool = True) -> CompressedModel:
        """Applies ``policy`` to a copy of the task's model and packs it (``verify``: decode the bytes in full
        and check them against the measured model); the file's header records the policy's runtime. A policy
        naming a learned method starts from the model that method trained (:attr:`learned`), its zeroed channels
        removed; ``from_learned=False`` starts from the task's model as given even when the run names one (the
        uncompressed baseline).

        Raises:
            ValueError: for a runtime the device profile does not allow.
        """
        base = self.task.model
        if from_learned:
            policy = self.with_learned(policy)
        if policy.learned is not None:
            base, policy = self.learned.base(policy.learned).model, self.learned.floored(policy)
        return compress(
            base,
            policy,
            input_shape=self.task.input_shape,
            source=self.task.source,
            channel_multiple=self.device.channel_multiple,
            refinement=refinement or self.refinement(self.settings.finetune),
            verify=verify,
            runtime=self.device_for(policy.runtime).runtime,
        )

    def with_learned(self, policy: Policy) -> Policy:
        """``policy`` naming :attr:`learned_default` when it names no learned method of its own."""
        if policy.learned is not None or self.learned_default is None:
            return policy
        return replace(policy, learned=self.learned_default)

    def device_for(self, runtime: str | None = None) -> DeviceProfile:
        """The profile that converts and times a candidate on ``runtime`` (``None``: the profile's default).

        Raises:
            ValueError: for a runtime the device profile does not allow.
        """
        if runtime is None or runtime == self.device.runtime:
            return self.device
        if runtime not in self.device.runtimes:
            raise ValueError(f"runtime {runtime!r} is not allowed on device {self.device.name!r} "
                             f"(its runtimes: {', '.join(self.device.runtimes)})")
        return self.device.on(runtime)

    @property
    def predictor(self) -> LatencyPredictor:
        """The latency model of the device's default runtime for this task (:meth:`predictor_for`)."""
        return self.predictor_for(None)

    def predictor_for(self, runtime: str | None) -> LatencyPredictor:
        """The latency model of ``runtime`` (``None``: the default) on the device for this task: one table per
        runtime (built, and if needed profiled, on first use)."""
        device = self.device_for(runtime)
        if device.runtime not in self._predictors:
            self._predictors[device.runtime] = build_predictor(
                self.task.model, self.task.input_shape, device, default_cache_dir(), self.leaders,
                self.device.channel_multiple, runnable=lambda model: self.runnable(model, device.runtime),
            )
        return self._predictors[device.runtime]

    def runnable(self, model: nn.Module, runtime: str | None = None) -> nn.Module:
        """What runs on the device: ``model`` itself, or its conversion for ``runtime`` (``None``: the default)."""
        return runnable_for(model, self.device_for(runtime), self.task.input_shape, self.calibration_inputs)

    def latency_ms(
        self, model: nn.Module, reuse: bool = True, runnable: nn.Module | None = None, runtime: str | None = None
    ) -> float:
        """:meth:`latency` in milliseconds."""
        return self.latency(model, reuse, runnable, runtime).ms

    def latency(
        self, model: nn.Module, reuse: bool = True, runnable: nn.Module | None = None, runtime: str | None = None
    ) -> Latency:
        """Latency of ``model`` on the device running ``runtime`` (``None``: the default), with its spread:
        measured, or predicted (by that runtime's latency model) when the settings say so.

        Dense models of identical shapes on one runtime run identical kernels, so they share one value. A measured
        latency within the target whose spread reaches past it (:meth:`Latency.near`) is measured again
        and the slower figure kept, so that no candidate counts as within target on one lucky run. With
        ``reuse=False`` the model is always run for real. A predicted latency has a NaN spread.

        Args:
            model: the decoded (fp32) model; its parameter names and shapes (and the runtime) key the cache.
            reuse: allow a cached or predicted value.
            runnable: ``self.runnable(model, runtime)`` if already built.
            runtime: the runtime it runs on.
        """
        def measured() -> Latency:
            first = self.measure_model(model, runnable, runtime)
            if self.latency_target_ms is not None and first.near(self.latency_target_ms):
                return first.worst(self.measure_model(model, runnable, runtime))
            return first

        if not reuse:
            return measured()
        key = (self.device_for(runtime).runtime, _architecture_key(model))
        if key not in self._latency_by_shape:
            if self.settings.latency == "predicted":
                predicted = self.predictor_for(runtime)(model)
                if len(self._latency_by_shape) % self.settings.latency_check_every == 0:
                    self.latency_checks.append(LatencyCheck(predicted, measured().ms))
                self._latency_by_shape[key] = Latency(predicted, float("nan"), 0)
            else:
                self._latency_by_shape[key] = measured()
        return self.current(self._latency_by_shape[key], runtime)

    def remember_latency(
        self, model: nn.Module, predicted_ms: float, measured: Latency, runtime: str | None = None
    ) -> None:
        """Records a real run of ``model``'s architecture on ``runtime``: every candidate of these shapes on it
        reuses it, and the pair counts as a check of the latency model."""
        self._latency_by_shape[(self.device_for(runtime).runtime, _architecture_key(model))] = measured
        self.latency_checks.append(LatencyCheck(predicted_ms, measured.ms))

    def time_on_device(self, runnable: nn.Module, runtime: str | None = None) -> float:
        """Latency in milliseconds of ``runnable`` on the device (:meth:`measure_on_device`)."""
        return self.measure_on_device(runnable, runtime).ms

    def measure_on_device(self, runnable: nn.Module, runtime: str | None = None) -> Latency:
        """Runs ``runnable`` (already converted for ``runtime``) in this process as the device profile says
        (``envs/timing.py``): latency and spread."""
        return measure(runnable, self.task.input_shape, self.device_for(runtime))

    def measure_model(
        self, model: nn.Module, runnable: nn.Module | None = None, runtime: str | None = None
    ) -> Latency:
        """Latency of the fp32 ``model`` as the device runs it on ``runtime``, where the settings say to time it.

        Args:
            model: the decoded fp32 model.
            runnable: ``self.runnable(model, runtime)`` if already built (used when timing inline).
            runtime: the runtime (``None``: the profile's default).
        """
        return self.measure_here(model, runnable, runtime)

    def measure_here(
        self, model: nn.Module, runnable: nn.Module | None = None, runtime: str | None = None
    ) -> Latency:
        """:meth:`measure_model` on this machine: in the timing worker (which converts ``model`` for the runtime
        itself), or inline (``settings.timing``); paired with the reference model when ``settings.paired_timing``."""
        device = self.device_for(runtime)
        if self.settings.timing == "worker":
            if self._timing_worker is None:
                self._timing_worker = self._new_worker()
            return self._timed(self._timing_worker, model, device)
        runnable = runnable or self.runnable(model, runtime)
        if not self.settings.paired_timing:
            return self.measure_on_device(runnable, runtime)
        if device.runtime not in self._reference_runnables:
            self._reference_runnables[device.runtime] = self.runnable(self.reference, device.runtime)
        paired = measure_paired(runnable, self._reference_runnables[device.runtime], self.task.input_shape, device,
                                self._anchor_rounds(device))
        return self._anchored(paired, device)

    def fresh_latency(self, model: nn.Module, runtime: str | None = None) -> Latency:
        """Latency of ``model`` on ``runtime`` in a timing process started for it alone, as a user loading the
        file would run it (paired with the same reference and scaled by the same anchor as every other figure).

        Exports are confirmed this way: a long-lived process and a new one can differ. With
        ``settings.timing: inline`` it is measured here.
        """
        if self.settings.timing != "worker":
            return self.measure_here(model, runtime=runtime)
        worker = self._new_worker()
        try:
            return self._timed(worker, model, self.device_for(runtime))
        finally:
            worker.close()

    @property
    def reference(self) -> nn.Module:
        """The reference model of paired timing: the task's model keeping :data:`REFERENCE_KEEP` of every
        layer's channels (the model itself where its channels cannot be pruned)."""
        if self._reference is None:
            try:
                policy = Policy.uniform(self.layer_names, LayerChoice(keep=REFERENCE_KEEP))
                self._reference = architecture(self.task.model, policy, self.task.input_shape,
                                               self.device.channel_multiple)
            except Exception:  # noqa: BLE001 - any model the pruner cannot take is its own reference
                self._reference = self.task.model
        return self._reference

    def _new_worker(self) -> TimingWorker:
        return TimingWorker(self.calibration_inputs, self.reference if self.settings.paired_timing else None)

    def _timed(self, worker: TimingWorker, model: nn.Module, device: DeviceProfile) -> Latency:
        if not self.settings.paired_timing:
            return worker.measure(model, self.task.input_shape, device)
        paired = worker.measure_paired(model, self.task.input_shape, device, self._anchor_rounds(device))
        return self._anchored(paired, device)

    def _anchor_rounds(self, device: DeviceProfile) -> int:
        """Rounds of the reference alone before the pairs: :data:`MAX_ROUNDS` until the runtime has an anchor."""
        return 0 if device.runtime in self.anchors else MAX_ROUNDS

    def _anchored(self, paired: Paired, device: DeviceProfile) -> Latency:
        """The paired measurement in milliseconds, after lowering the runtime's anchor to its fastest reference
        round if that is faster."""
        anchor = min(self.anchors.get(device.runtime, paired.fastest_reference), paired.fastest_reference)
        self.anchors[device.runtime] = anchor
        return paired.latency(anchor)

    def current(self, latency: Latency, runtime: str | None = None) -> Latency:
        """A paired ``latency`` scaled to ``runtime``'s present anchor (the anchor only falls during a run, as
        faster reference rounds are seen); any other latency unchanged."""
        return latency.reanchored(self.anchors.get(self.device_for(runtime).runtime, latency.anchor_ms))

    def timing_text(self) -> str:
        """Where and how latencies are measured, for reports."""
        where = f"timed in {TIMING_WORKER_TEXT}" if self.settings.timing == "worker" else \
            "timed in the searching process"
        if not self.settings.paired_timing:
            return f"{where}; the latency is the minimum of the round medians"
        return (f"{where}; each round of a model alternates with a round of a reference model (the task's model at "
                f"{REFERENCE_KEEP:.0%} of its channels, on the same runtime), and the latency is the median ratio "
                f"to the neighbouring reference rounds times the reference's fastest round in the run")

    def close(self) -> None:
        """Ends the timing worker, if one was started (a later measurement starts another)."""
        if self._timing_worker is not None:
            self._timing_worker.close()

    def predicted_latency_ms(self, model: nn.Module, runtime: str | None = None) -> float | None:
        """``runtime``'s latency model's prediction for ``model`` (``None`` unless latency is predicted)."""
        return self.predictor_for(runtime)(model) if self.settings.latency == "predicted" else None

    @staticmethod
    def runtime_of(compressed: CompressedModel) -> str | None:
        """The runtime a compressed candidate runs on (its header's, ``None`` for the default)."""
        return compressed.meta.get(RUNTIME_KEY)

    def score(self, model: nn.Module, data: Data, runtime: str | None = None) -> float:
        """The task metric of ``model`` (as ``runtime`` runs it) on ``data`` as a higher-is-better score
        (:meth:`core.metric.MetricSpec.score`: accuracy itself, minus bits per character); results and searchers
        hold scores. An eager model is scored on the compute device, a converted one on the CPU it runs on."""
        eager = self.device_for(runtime).runtime == TorchEager.name
        on = self.compute if eager else torch.device("cpu")
        return self.task.metric_spec.score(evaluate(model, data, self.task.scorer, device=on))

    def val_score(self, compressed: CompressedModel) -> float:
        """Validation score of the compressed model as it runs on the device (what model selection uses)."""
        runtime = self.runtime_of(compressed)
        return self.score(self.runnable(compressed.model, runtime), self.val_data, runtime)

    def test_accuracy(self, compressed: CompressedModel) -> float:
        """Test-split score of the compressed model as it runs on the device (report only; never searched on)."""
        runtime = self.runtime_of(compressed)
        return self.score(self.runnable(compressed.model, runtime), self.task.test, runtime)

    def measure(self, compressed: CompressedModel, reuse_latency: bool = True) -> Result:
        """Validation accuracy, packed size, latency, MACs and parameters of a compressed model.

        Accuracy and latency are those of the model as the device runs it on the candidate's runtime (int8 on
        an int8 runtime); the result names that runtime.
        """
        model = compressed.model
        runtime = self.device_for(self.runtime_of(compressed)).runtime
        runnable = self.runnable(model, runtime)
        architecture = _architecture_key(model)
        if architecture not in self._layers_by_shape:  # a traced forward pass, once per architecture
            specs = discover_layers(model, self.task.input_shape)
            macs = total_macs(specs) + generated_macs(model, self.task.input_shape)
            self._layers_by_shape[architecture] = (macs, [k for s in specs for k in weight_keys(model, s.name)])
        macs, weights = self._layers_by_shape[architecture]
        nonzero = sum(int(torch.count_nonzero(model.get_parameter(name))) for name in weights)
        latency = self.latency(model, reuse=reuse_latency, runnable=runnable, runtime=runtime)
        return Result(
            val_accuracy=self.score(runnable, self.val_data, runtime),
            size_bytes=compressed.size_bytes,
            latency_ms=latency.ms,
            latency_spread_ms=latency.spread_ms,
            macs=macs,
            params=sum(p.numel() for p in model.parameters()),
            nonzero_weights=nonzero,
            runtime=runtime,
        )

    def evaluate(self, policy: Policy, on_error: Callable[[Exception], None] | None = None,
                 finetune: FinetuneSettings | None = None) -> Result:
        """Compresses and measures one candidate; a candidate that raises becomes a failed result.

        Args:
            policy: the candidate.
            on_error: called with the exception of a failed candidate.
            finetune: the candidate's fine-tune (default: ``settings.finetune``, the screening fidelity).
        """
        finetune = self.settings.finetune if finetune is None else finetune
        policy = self.with_learned(policy)
        key = policy.digest()
        if finetune != self.settings.finetune:
            key = f"{key}@{finetune.steps}:{finetune.lr}"
        if key in self._cache:
            return self._cache[key]
        start = time.perf_counter()
        verify = self._compressed % self.settings.decode_check_every == 0
        self._compressed += 1
        try:
            result = self.measure(self.compress(policy, self.refinement(finetune), verify=verify))
            result = replace(result, seconds=time.perf_counter() - start, finetune_steps=finetune.steps,
                             screen_accuracy=result.val_accuracy)
        except Exception as exc:  # noqa: BLE001 - a broken candidate must not stop the search
            if on_error is not None:
                on_error(exc)
            result = Result.failed(f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start)
        self._cache[key] = result
        return result
