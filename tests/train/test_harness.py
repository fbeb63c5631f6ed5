"""The per-worker training logic without Ray (``octvideo.train.harness``), two ranks under gloo:
every collective on the worker's device, bounded bad-video accounting, the fp32 export equal to
the optimizer's fp32 weights after bf16 training, fp32 batch norm with the same statistics on
every rank at evaluation, checkpoint and restore; and a compiled, channels-last model under
ZeRO-2 that trains, checkpoints and resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from octvideo.train.config import ModelConfig
from octvideo.train.network import build_network

STEPS = 4  # per epoch and rank; 2 clips a step, 2 ranks: 16 training videos
TRAIN_VIDEOS = STEPS * 2 * 2


def run_harness(folder: Path, *options: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "octvideo.train.harness", "--device", "cpu", "--world-size", "2",
               "--model", "oct_i3d_r18", "--width", "8", "--classes", "3", "--size", "32", "--frames", "4",
               "--batch", "2", "--steps", str(STEPS), "--log-every", "1", "--precision", "bf16",
               "--folder", str(folder), "--output", str(folder / "result.json"), *options]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads((folder / "result.json").read_text())


@pytest.fixture(scope="module")
def zero0(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_harness(tmp_path_factory.mktemp("zero0"), "--zero-stage", "0", "--bad-videos", "1")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # aot_eager: torch.compile's graph capture and AOT autograd without inductor's C++ code
    # generation, which takes many minutes on 2 cores (the GPU acceptance compiles with inductor).
    return run_harness(tmp_path_factory.mktemp("compiled"), "--zero-stage", "2", "--memory-format", "channels_last",
                       "--compile", "--compile-backend", "aot_eager")


@pytest.mark.parametrize("phase", ["first", "resumed"])
def test_every_collective_gets_tensors_on_the_workers_device(zero0: dict[str, Any], phase: str) -> None:
    found = zero0[phase]
    assert found["device"] == "cpu"
    assert set(found["collective_devices"]) <= {"cpu", "object"}
    assert found["collective_calls"]["all_reduce"] > 0


def test_bad_video_accounting_is_bounded_and_run_wide(zero0: dict[str, Any]) -> None:
    first = zero0["first"]
    # One report a step (log_every 1), but the reports are gathered once, at the epoch's end.
    assert first["collective_calls"]["all_gather_object"] == 1
    assert first["bad_videos"] == 1 and first["videos_tried"] == TRAIN_VIDEOS  # over both ranks


@pytest.mark.parametrize("phase", ["first", "resumed"])
def test_bf16_training_keeps_batch_norm_fp32_and_the_same_on_every_rank(zero0: dict[str, Any], phase: str) -> None:
    found = zero0[phase]
    assert found["batch_norm_fp32"]
    assert found["eval_passes"] >= 1 and found["eval_bn_sums_equal_across_ranks"]


@pytest.mark.parametrize("run", ["zero0", "compiled"])
def test_the_export_is_the_optimizers_fp32_weights(run: str, request: pytest.FixtureRequest) -> None:
    for phase in ("first", "resumed"):
        found = request.getfixturevalue(run)[phase]
        assert found["export_all_fp32"] and found["export_equals_optimizer_weights"], (run, phase)
        # Weights rounded to bf16 (DeepSpeed's bf16 mode under ZeRO-0) would all be representable.
        assert found["export_bf16_representable_share"] < 0.5, (run, phase)


@pytest.mark.parametrize("run", ["zero0", "compiled"])
def test_a_fresh_trainer_resumes_from_the_checkpoint(run: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    result = request.getfixturevalue(run)
    assert result["first"]["global_steps"] == list(range(1, STEPS + 1))
    assert result["resumed"]["global_steps"] == list(range(STEPS + 1, 2 * STEPS + 1))
    assert result["resumed_from_step"] == STEPS
    assert result["resumed"]["test_video_top1"] is not None


def test_the_exported_weights_load_into_the_plain_network(zero0: dict[str, Any]) -> None:
    state = torch.load(Path(zero0["args"]["folder"]) / "model_fp32.pt", weights_only=True)
    model = build_network(ModelConfig(name="oct_i3d_r18", alpha=0.5, width=8), num_classes=3)
    model.load_state_dict(state)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(1, 3, 4, 32, 32))).all()


def test_the_gpu_acceptance_summary_reads_the_harness_results(zero0: dict[str, Any], tmp_path: Path) -> None:
    """benchmarks/gpu_summary.py (the last step of benchmarks/gpu_acceptance.sh) on a real harness result."""
    (tmp_path / "harness_zero0_alpha0.5.json").write_text(json.dumps(zero0))
    (tmp_path / "steps.txt").write_text("gpu_tests 0 12\nharness_zero0_alpha0.5 0 40\n")
    (tmp_path / "gpu.txt").write_text("cpu (a dry run)\n")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_summary.py"
    completed = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    summary = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    (run,) = summary["harness"]
    assert summary["passed"] and run["failed_checks"] == [] and run["clips_per_s"] > 0
    assert "| zero0_alpha0.5 |" in completed.stdout
