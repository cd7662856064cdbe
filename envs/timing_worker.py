"""A long-lived process that times models as a deployment would, away from the search's own process.

The process that searches also fine-tunes, evaluates and packs; its allocator and thread pools carry that
work's state, which moves a small model's latency by up to 2x. The timing worker is a separate Python
process (``python -m envs.timing_worker``: a fresh interpreter, not a fork of the searching one, and the
caller's main module is never re-imported) that does nothing but time: it
receives the decoded fp32 model, converts it for the profile's runtime itself (as a deployment loads a file
and builds its runtime), warms up and measures it with the protocol of :mod:`envs.timing`. It runs with
glibc malloc set by :data:`envs.timing.ALLOCATOR_ENV` (a fixed mmap threshold, no trimming), the profile's
intra-op threads and one inter-op thread.

The model travels pickled with ``cloudpickle``; classes defined in a user's ``--model FILE.py`` (imported
under a private module name the worker could not import) travel by value. The worker is started on first
use, restarted if it dies, and ends with its owner.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import cloudpickle
import torch
from torch import nn

from core.spec import as_shape
from envs.profile import DeviceProfile
from envs.runtimes import RuntimeConversionError, runnable_for
from envs.timing import Latency, Paired, allocator_env, allocator_text, measure, measure_paired

PRIVATE_MODULE_PREFIX = "_autocompress_user_"
"""Modules of user model files are imported under names starting with this (``envs/tasks/user.py``)."""
SETTINGS_TEXT = (
    f"a separate timing process; glibc malloc with {allocator_text()}; "
    "the profile's intra-op threads, 1 inter-op thread"
)
"""How the worker runs, for reports."""


class TimingWorkerError(RuntimeError):
    """The worker could not time a model (its error text, or that the process died)."""


class TimingWorker:
    """Times models in a separate long-lived process; see the module docstring.

    Args:
        calibration: representative inputs that set int8 activation ranges (sent once per worker process).
        reference: the reference model of :meth:`measure_paired` (fp32; sent once per worker process, converted
            there once per runtime).
    """

    def __init__(self, calibration: torch.Tensor, reference: nn.Module | None = None) -> None:
        self.calibration = calibration
        self.reference = reference
        self._process: subprocess.Popen[bytes] | None = None
        self._inputs_sent = False

    def measure(self, model: nn.Module, input_shape: Sequence[int], device: DeviceProfile) -> Latency:
        """The latency of ``model`` converted for ``device``'s runtime and timed in the worker.

        Raises:
            RuntimeConversionError: when the runtime cannot take the model.
            TimingWorkerError: when the worker fails otherwise or dies (it is restarted on the next call).
        """
        return self._ask(model, input_shape, device, None)

    def measure_paired(
        self, model: nn.Module, input_shape: Sequence[int], device: DeviceProfile, min_reference_rounds: int = 0
    ) -> Paired:
        """``model``'s rounds alternated with the reference's, both converted for ``device``'s runtime
        (:func:`envs.timing.time_paired`).

        Raises:
            ValueError: when the worker has no reference model.
            RuntimeConversionError: when the runtime cannot take the model or the reference.
            TimingWorkerError: as :meth:`measure`.
        """
        if self.reference is None:
            raise ValueError("measure_paired needs a TimingWorker made with a reference model")
        return self._ask(model, input_shape, device, min_reference_rounds)

    def _ask(self, model: nn.Module, input_shape: Sequence[int], device: DeviceProfile,
             paired: int | None) -> Any:
        process = self._ensure_started()
        _ship_user_code(model)
        first = not self._inputs_sent
        request = (model, as_shape(input_shape), device, self.calibration if first else None,
                   self.reference if first else None, paired)
        try:
            _write_frame(process.stdin, cloudpickle.dumps(request))
            status, payload = cloudpickle.loads(_read_frame(process.stdout))
        except (EOFError, OSError) as exc:
            self.close()
            raise TimingWorkerError("the timing worker process died; it restarts on the next measurement") from exc
        self._inputs_sent = True
        if status == "ok":
            return payload
        if status == "conversion":
            raise RuntimeConversionError(payload)
        raise TimingWorkerError(f"the timing worker failed: {payload}")

    def close(self) -> None:
        """Ends the worker process (a later :meth:`measure` starts a new one)."""
        _stop(self._process)
        self._process = None
        self._inputs_sent = False

    def _ensure_started(self) -> subprocess.Popen[bytes]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self.close()
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        env = allocator_env({**os.environ, "PYTHONPATH": path})
        process = subprocess.Popen(
            [sys.executable, "-m", "envs.timing_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self._process = process
        weakref.finalize(self, _stop, process)
        return process

    def __getstate__(self) -> dict[str, Any]:
        """A copy (e.g. shipped to another process) starts its own worker when it needs one."""
        return {"calibration": self.calibration, "reference": self.reference, "_process": None,
                "_inputs_sent": False}


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """The worker's loop: receive a model, convert it for the runtime, time it (alone, or paired with the
    reference converted for the same runtime, once per runtime), answer; until input ends."""
    torch.set_num_interop_threads(1)
    calibration: torch.Tensor | None = None
    reference: nn.Module | None = None
    converted: dict[tuple[str, tuple[int, ...]], nn.Module] = {}
    while True:
        try:
            data = _read_frame(requests)
        except EOFError:
            return
        try:
            model, input_shape, device, sent, sent_reference, paired = cloudpickle.loads(data)
            calibration = sent if sent is not None else calibration
            reference = sent_reference if sent_reference is not None else reference
            runnable = runnable_for(model, device, input_shape, calibration)
            if paired is None:
                answer: tuple[str, Any] = ("ok", measure(runnable, input_shape, device))
            else:
                if reference is None:
                    raise ValueError("no reference model was sent")
                key = (device.runtime, as_shape(input_shape), as_shape(input_shape).vocab)
                if key not in converted:
                    converted[key] = runnable_for(reference, device, input_shape, calibration)
                answer = ("ok", measure_paired(runnable, converted[key], input_shape, device, paired))
        except RuntimeConversionError as exc:
            answer = ("conversion", str(exc))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller as one line
            answer = ("error", f"{type(exc).__name__}: {exc}".splitlines()[0])
        _write_frame(answers, cloudpickle.dumps(answer))


_FRAME = struct.Struct("<Q")


def _write_frame(stream: IO[bytes] | None, data: bytes) -> None:
    if stream is None:
        raise OSError("no pipe to the timing worker")
    stream.write(_FRAME.pack(len(data)) + data)
    stream.flush()


def _read_frame(stream: IO[bytes] | None) -> bytes:
    if stream is None:
        raise OSError("no pipe from the timing worker")
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise EOFError("the pipe closed")
    (length,) = _FRAME.unpack(head)
    data = stream.read(length)
    if len(data) < length:
        raise EOFError("the pipe closed mid-message")
    return data


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    """Closes the worker's input (its loop then returns) and waits briefly for it, killing it if needed."""
    if process is None:
        return
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _ship_user_code(model: nn.Module) -> None:
    """Pickles classes from user model files by value: the worker could not import their private module names."""
    for module in {type(m).__module__ for m in model.modules()}:
        if module.startswith(PRIVATE_MODULE_PREFIX) and module in sys.modules:
            cloudpickle.register_pickle_by_value(sys.modules[module])


if __name__ == "__main__":
    # Answers go to the real stdout only; anything the libraries print goes to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, answers)
