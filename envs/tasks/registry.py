"""Built-in task registry, the ``Task`` bundle and ``load_task`` (with a weight cache)."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from core.errors import UsageError
from core.metric import MetricSpec
from core.paths import default_cache_dir
from core.spec import SampleShape
from envs.tasks import charlstm, chartransformer, hypernets, mobilenet, mobilenet96, models, students
from envs.tasks.data import Splits, data_fingerprint, materialize_splits, mnist_splits, probe, sample_shape
from envs.tasks.definition import Loss, checked_definition
from envs.tasks.mnist96 import mnist96_splits
from envs.tasks.students import teacher_targets
from envs.tasks.text import text_splits
from envs.tasks.training import TrainRecipe, train_model
from envs.tasks.user import (
    build_user_model,
    call_factory,
    check_fit,
    code_fingerprint,
    load_user_data,
    load_weights,
    one_line,
    parse_factory,
    read_state_dict,
    state_dict_problems,
)
from methods.compute import compute_device
from methods.objective import METRICS, Metric, default_metric, mimic_loss
from methods.streams import Data

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bumped whenever cached weights become invalid for reasons not in the digest."""


@dataclass(frozen=True)
class TaskSpec:
    """A built-in task: how to build its architecture and how to train it."""

    factory: Callable[[], nn.Module]
    """Builds the untrained architecture (no arguments)."""
    recipe: TrainRecipe
    """Training recipe used when no weights are given."""
    description: str
    """One-line human-readable description."""
    data: Callable[[], Splits] = mnist_splits
    """The task's (train, val, test) splits."""
    metric: str = "accuracy"
    """The metric it is scored by (:data:`methods.objective.METRICS`)."""
    teacher: str | None = None
    """A built-in task whose trained model this one mimics (Ba and Caruana 2014): it is trained to regress that
    model's logits on the training inputs (:func:`methods.objective.mimic_loss`) instead of the labels."""


def _students(teacher: str, factory: Callable[[], nn.Module], recipe: TrainRecipe, params: str) -> dict[str, TaskSpec]:
    """A teacher's two student tasks: ``<teacher>-mimic`` trained on its logits, ``<teacher>-student`` (the same
    network and recipe) on the labels."""
    name = factory.__name__
    return {
        f"{teacher}-mimic": TaskSpec(factory, recipe, f"{name} ({params} params) trained on the {teacher} task's "
                                     "logits (mimic student, Ba and Caruana 2014) on MNIST-5k", teacher=teacher),
        f"{teacher}-student": TaskSpec(factory, recipe, f"{name} ({params} params) trained on the labels (the "
                                       f"{teacher}-mimic control) on MNIST-5k"),
    }


TASKS: dict[str, TaskSpec] = {
    "lenet300": TaskSpec(
        models.LeNet300,
        TrainRecipe(epochs=15, lr=2e-3, batch_size=32),
        "LeNet-300-100 MLP on MNIST-5k (266,610 params)",
    ),
    "lenet5": TaskSpec(
        models.LeNet5,
        TrainRecipe(epochs=10, lr=1e-3, batch_size=32),
        "Caffe LeNet-5 CNN on MNIST-5k (431,080 params)",
    ),
    "resnet": TaskSpec(
        models.ResNet,
        TrainRecipe(epochs=4, lr=2e-3, batch_size=32, schedule="cosine"),
        "BatchNorm ResNet (3 stages, 2.0M params, ~8 MB fp32) on MNIST-5k",
    ),
    "mobilenet": TaskSpec(
        mobilenet.MobileNetV2,
        TrainRecipe(epochs=8, lr=2e-3, batch_size=32, schedule="cosine"),
        "MobileNetV2 (inverted residuals, depthwise convs, 193k params, ~0.8 MB fp32) on MNIST-5k",
    ),
    "charlstm": TaskSpec(
        charlstm.CharLSTM,
        TrainRecipe(epochs=8, lr=3e-3, batch_size=64, schedule="cosine"),
        "character-level LSTM language model (embedding 32, LSTM 256) on Python standard-library text, "
        "scored in bits per character",
        data=text_splits,
        metric="bpc",
    ),
    "mobilenet96": TaskSpec(
        mobilenet96.MobileNetV2At96,
        TrainRecipe(epochs=5, lr=2e-3, batch_size=32, schedule="cosine"),
        "MobileNetV2 (stride-2 stem, inverted residuals, 216,266 params, ~0.87 MB fp32, 23.6M MACs per image) on "
        "MNIST-5k upsampled to 3x96x96",
        data=mnist96_splits,
    ),
    "chartransformer": TaskSpec(
        chartransformer.CharTransformer,
        TrainRecipe(epochs=6, lr=3e-3, batch_size=64, schedule="cosine"),
        "causal character-level transformer (width 96, 2 pre-norm layers of 4-head attention, 248,930 params) on "
        "Python standard-library text, scored in bits per character",
        data=text_splits,
        metric="bpc",
    ),
    **_students("lenet300", students.ShallowMLP, TrainRecipe(epochs=15, lr=2e-3, batch_size=32), "79,510"),
    **_students("lenet5", students.ShallowCNN, TrainRecipe(epochs=10, lr=1e-3, batch_size=32), "79,926"),
    **_students("resnet", students.SmallCNN, TrainRecipe(epochs=8, lr=2e-3, batch_size=32, schedule="cosine"),
                "50,282"),
    "lenet5-hyper": TaskSpec(
        hypernets.HyperLeNet5,
        TrainRecipe(epochs=10, lr=1e-3, batch_size=32),
        "Caffe LeNet-5 whose conv2 kernel a static hypernetwork generates (Ha et al. 2016; N_z = d = 4; 412,734 "
        "params) on MNIST-5k",
    ),
    "resnet-hyper": TaskSpec(
        hypernets.HyperResNet,
        TrainRecipe(epochs=4, lr=2e-3, batch_size=32, schedule="cosine"),
        "the BatchNorm ResNet whose 3x3 kernels after the stem a static hypernetwork generates (Ha et al. 2016; "
        "8x8 slices, N_z = 16, d = 64; 105,802 params, 19x fewer) on MNIST-5k",
    ),
}
"""Registry of built-in tasks, by name."""
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
"""Names of the built-in tasks."""
DEFAULT_TASK = "resnet"
"""Task used when neither a task name nor a user model is given."""
USER_RECIPE = TrainRecipe(epochs=10, lr=1e-3, batch_size=64)
"""Recipe used to train a user model given without weights."""


@dataclass
class Task:
    """A trained model together with its data, provenance and training recipe."""

    name: str
    """Task name: a built-in name such as ``lenet5``, or ``user:FILE.py:factory``."""
    model: nn.Module
    """Trained fp32 model in eval mode."""
    train: Data
    """Training split, in memory or streamed (:mod:`methods.streams`)."""
    val: Data
    """Validation split (the search scores on a fixed subset of it: ``evaluator.val_samples``)."""
    test: Data
    """Test split (read in full, in order, to report the exported models)."""
    input_shape: SampleShape
    """Shape of one input sample, e.g. ``(1, 28, 28)``; for token-id inputs with their range (``vocab``)."""
    num_classes: int
    """Number of classes the model scores (0 for float targets)."""
    source: dict[str, str]
    """JSON-able recipe for ``build_architecture``: ``{"task": ...}`` or ``{"model": ...}``."""
    recipe: TrainRecipe
    """Recipe the model is (or would be) trained with."""
    metric: str = "accuracy"
    """The name of the metric the task is scored by: one in :data:`methods.objective.METRICS`, or
    ``custom_metric``'s."""
    custom_metric: Metric | None = None
    """A task file's own metric (``None``: the registered one named ``metric``)."""
    loss: Loss | None = None
    """A task file's own training and fine-tuning loss (``None``: :func:`methods.objective.task_loss`)."""
    initial: dict[str, torch.Tensor] | None = None
    """The model's weights before its training, when this tool trained it (for rewinding to initialisation, the
    lottery-ticket schedule); ``None`` for weights given to it."""

    @property
    def scorer(self) -> Metric:
        """The metric itself."""
        return self.custom_metric if self.custom_metric is not None else METRICS[self.metric]

    @property
    def metric_spec(self) -> MetricSpec:
        """The metric's name and direction."""
        return self.scorer.spec


def _builtin(name: str) -> TaskSpec:
    spec = TASKS.get(name)
    if spec is None:
        raise UsageError(
            f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)} or give a model factory as FILE.py:FACTORY"
        )
    return spec


def build_architecture(source: dict[str, str]) -> nn.Module:
    """A fresh, untrained module described by a ``Task.source`` dict.

    Raises:
        UsageError: Unknown task, bad source dict, or a user factory that fails.
    """
    if not isinstance(source, dict) or len({"task", "model", "task_file"} & set(source)) != 1:
        raise UsageError(
            f"model source {source!r} must have exactly one of the keys 'task', 'model' or 'task_file'; "
            "the file describing the model is damaged or from another version"
        )
    if "task" in source:
        return _builtin(str(source["task"])).factory()
    if "task_file" in source:
        ref = parse_factory(str(source["task_file"]), "task")
        return checked_definition(call_factory(ref, "task"), f"task factory {ref.display!r}").model
    return build_user_model(parse_factory(str(source["model"]), "model"))


def builtin_code_fingerprint(factory: Callable[[], nn.Module]) -> str:
    """SHA-256 prefix of the file defining a built-in architecture, of the files of its base classes in this
    package (a subclass's cached weights go stale when its base class changes) and of the modules it names in
    ``code_modules`` (code outside this package that computes its forward pass, e.g. a hypernetwork)."""
    files = [inspect.getfile(factory)]
    if isinstance(factory, type):
        package = Path(__file__).resolve().parent
        files += [inspect.getfile(base) for base in factory.__mro__[1:] if base.__module__.startswith(__package__)
                  and Path(inspect.getfile(base)).resolve().parent == package]
        files += [inspect.getfile(module) for module in getattr(factory, "code_modules", ())]
    digest = hashlib.sha256()
    for path in dict.fromkeys(files):  # the defining file first, as the key always had it
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def cache_path(
    cache_dir: Path,
    name: str,
    source: dict[str, str],
    recipe: TrainRecipe,
    splits: Splits,
    code: str = "",
) -> Path:
    """Cache file of trained weights: ``cache_dir / f"{name}-{digest}.pt"``.

    The digest covers the source, recipe, data fingerprint and the code fingerprint of
    the file defining the architecture; unsafe file-name characters of ``name`` become ``_``.
    """
    key = {
        "version": CACHE_VERSION,
        "source": source,
        "recipe": asdict(recipe),
        "data": data_fingerprint(splits),
        "code": code,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "task"
    return Path(cache_dir) / f"{safe}-{digest}.pt"


def _load_cached(model: nn.Module, path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        state = read_state_dict(path)
        problems = state_dict_problems(model, state)
        if problems:
            raise ValueError("; ".join(problems))
        model.load_state_dict(state, strict=True)
    except (UsageError, ValueError, RuntimeError) as exc:
        logger.warning("ignoring unusable cache file %s (%s); retraining", path, one_line(exc))
        return False
    logger.info("loaded cached weights from %s", path)
    return True


def save_state_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    """Writes ``state`` to ``path`` through a temporary file in the same folder (never a half-written file); a
    failure to write is a warning, not an error (the file is a cache)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(state, handle)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        logger.warning("could not write cache file %s (%s); continuing", path, one_line(exc))


def _trained(
    model: nn.Module,
    name: str,
    source: dict[str, str],
    recipe: TrainRecipe,
    splits: Splits,
    cache_dir: Path,
    code: str,
    progress: bool,
    loss: Loss | None = None,
    compute: str = "cpu",
) -> None:
    path = cache_path(cache_dir, name, source, recipe, splits, code)
    if _load_cached(model, path):
        return
    logger.info("training %s (%s); caching weights at %s", name, recipe, path)
    train_model(model, splits[0], recipe, progress=progress, loss=loss, device=compute_device(compute))
    save_state_atomic({k: v.detach().clone() for k, v in model.state_dict().items()}, path)


def load_task(
    task: str | None = None,
    *,
    model: str | None = None,
    weights: str | Path | None = None,
    data: str | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
    metric: str | None = None,
    compute: str = "cpu",
) -> Task:
    """Build a ready-to-compress ``Task``: a trained model plus its data.

    Args:
        task: Built-in task name (default ``DEFAULT_TASK``), or a task file ``FILE.py:factory`` returning a
            :class:`~envs.tasks.definition.TaskDefinition`; ignored when ``model`` is given.
        model: User model factory, ``FILE.py:factory`` or ``package.module:factory``.
        weights: A state_dict file for the model; without it the model is trained (cached).
        data: User data factory ``FILE.py:factory`` returning (train, val, test) datasets;
            MNIST-5k when None.
        cache_dir: Weight cache directory (default ``default_cache_dir()``).
        progress: Show a training progress bar.
        metric: The metric to score by, a name in :data:`methods.objective.METRICS`; default: the built-in
            task's, else ``accuracy`` for integer targets and ``mse`` for float targets.
        compute: Where a model without weights is trained (:mod:`methods.compute`).

    Raises:
        UsageError: Any problem with the task name, factories, weights or data.
    """
    if model is None and task is not None and ":" in task:
        if data is not None:
            raise UsageError("--data cannot be used with a task file: the task's factory returns its data")
        return _task_file(task, weights=weights, cache_dir=cache_dir, progress=progress, metric=metric,
                          compute=compute)
    teacher = None
    if model is None:
        name = task if task is not None else DEFAULT_TASK
        recipe, builtin_data, teacher = _builtin(name).recipe, _builtin(name).data, _builtin(name).teacher
        metric = metric or _builtin(name).metric
        source = {"task": name}
        code = builtin_code_fingerprint(_builtin(name).factory)
    else:
        ref = parse_factory(model, "model")
        name, recipe, source = f"user:{ref.display}", USER_RECIPE, {"model": ref.source}
        code = code_fingerprint(ref)
        builtin_data = mnist_splits
    splits = load_user_data(data) if data is not None else builtin_data()
    metric = _checked_metric(metric or default_metric(probe(splits[0]).tensors[1]), splits)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)  # deterministic initial weights
        net = build_architecture(source)
    if weights is not None:
        load_weights(net, weights)
    num_classes = check_fit(net, splits)
    initial = None
    if weights is None:
        initial = _initial_state(net)
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        fitted, loss = splits, None
        if teacher is not None:  # a mimic student: the teacher task's logits are its targets
            taught = load_task(teacher, data=data, cache_dir=cache_dir, progress=progress, compute=compute).model
            fitted, loss = (teacher_targets(taught, splits[0]), *splits[1:]), mimic_loss
        _trained(net, name, source, recipe, fitted, cache, code, progress, loss=loss, compute=compute)
    train, val, test = splits
    return Task(
        initial=initial,
        name=name,
        model=net.eval(),
        train=train,
        val=val,
        test=test,
        input_shape=sample_shape(splits),
        num_classes=num_classes,
        source=source,
        recipe=recipe,
        metric=metric,
    )


def _task_file(
    spec: str, *, weights: str | Path | None, cache_dir: Path | None, progress: bool, metric: str | None,
    compute: str = "cpu",
) -> Task:
    """The task a ``FILE.py:factory`` task file defines (see :class:`~envs.tasks.definition.TaskDefinition`)."""
    ref = parse_factory(spec, "task")
    where = f"task factory {ref.display!r}"
    definition = checked_definition(call_factory(ref, "task"), where)
    splits = materialize_splits(
        (definition.train, definition.val, definition.test), where, definition.collate, definition.to_device
    )
    custom = definition.metric if isinstance(definition.metric, Metric) and metric is None else None
    if custom is None:
        named = metric or (definition.metric if isinstance(definition.metric, str) else None)
        name = _checked_metric(named or default_metric(probe(splits[0]).tensors[1]), splits)
    else:
        name = custom.spec.name
    net, source, recipe = definition.model, {"task_file": ref.source}, definition.recipe or USER_RECIPE
    if weights is not None:
        load_weights(net, weights)
    num_classes = check_fit(net, splits)
    initial = None
    if weights is None and not definition.trained:
        initial = _initial_state(net)
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        _trained(net, f"task:{ref.display}", source, recipe, splits, cache, code_fingerprint(ref), progress,
                 definition.loss, compute)
    train, val, test = splits
    return Task(
        name=f"task:{ref.display}", model=net.eval(), train=train, val=val, test=test,
        input_shape=sample_shape(splits), num_classes=num_classes, source=source, recipe=recipe, metric=name,
        custom_metric=custom, loss=definition.loss, initial=initial,
    )


def _initial_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's untrained state."""
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _checked_metric(name: str, splits: Splits) -> str:
    """``name`` when it is a registered metric that can score the splits' targets."""
    if name not in METRICS.names():
        raise UsageError(f"unknown metric {name!r}; choose one of {', '.join(METRICS.names())}")
    floats = probe(splits[0]).tensors[1].dtype.is_floating_point
    if METRICS[name].float_targets != floats:
        kind = "float (regression)" if floats else "integer (class label)"
        fitting = [other for other, metric in METRICS.items() if metric.float_targets == floats]
        raise UsageError(f"metric {name!r} cannot score {kind} targets; use {' or '.join(fitting)}")
    return name
