"""``--compute``: where training, fine-tunes and metrics run; a GPU this machine lacks is one line and exit 2."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from core.errors import UsageError
from core.policy import LayerChoice, Policy
from envs.device import DeviceProfile
from envs.evaluator import Evaluator
from envs.tasks import load_task
from methods.compute import compute_device
from search.cli import main
from search.distributed.sweep import trial_resources

FAST = DeviceProfile(name="test-compute", threads=1, batch=8, warmup=1, repeats=3)
NO_CUDA = not torch.cuda.is_available()


def test_compute_names() -> None:
    assert compute_device("cpu") == torch.device("cpu") and compute_device(" CPU ") == torch.device("cpu")
    with pytest.raises(UsageError, match="unknown compute device 'tpu'; use cpu, cuda, cuda:N or mps"):
        compute_device("tpu")
    with pytest.raises(UsageError, match="unknown compute device"):
        compute_device("cuda:x")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    assert main(["--compute", "cuda", "--budget-mb", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --compute cuda: this machine has no CUDA GPU that torch can use; use --compute cpu"
    assert not out.exists()


def test_a_gpu_sweep_trial_asks_for_a_share_of_the_gpu() -> None:
    def job(device: str, workers: int) -> SimpleNamespace:
        return SimpleNamespace(options=SimpleNamespace(threads_per_trial=2), workers=workers,
                               evaluator=SimpleNamespace(compute=torch.device(device)))

    assert trial_resources(job("cpu", 4)) == {"cpu": 2}
    assert trial_resources(job("cuda:0", 4)) == {"cpu": 2, "gpu": 0.25}


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU: none on this machine")
def test_the_pipeline_on_a_gpu_matches_the_cpu_within_float_noise() -> None:
    task = load_task("lenet300")
    policy = Policy.from_choices({"fc1": LayerChoice(0.5, 4), "fc2": LayerChoice(0.5, 4), "fc3": LayerChoice(0.0, 8)})
    results = {}
    for compute in ("cpu", "cuda"):
        evaluator = Evaluator(task, FAST, compute=compute)
        try:
            results[compute] = evaluator.evaluate(policy)
            compressed = evaluator.compress(policy)
            assert next(compressed.model.parameters()).device.type == "cpu"  # packed and measured on the CPU
        finally:
            evaluator.close()
    assert results["cuda"].ok and abs(results["cuda"].val_accuracy - results["cpu"].val_accuracy) <= 0.01
    assert results["cuda"].size_bytes == pytest.approx(results["cpu"].size_bytes, rel=0.02)
