"""The job log's lines: compact report lines (octvideo.train.report_lines) and the library lines a
worker leaves out (octvideo.train.worker_logs)."""

from __future__ import annotations

import logging
import warnings

import pytest

from octvideo.train.report_lines import epoch_line, run_line, step_line
from octvideo.train.worker_logs import prints_to_debug_log, quiet_library_logs

STEP = {"global_step": 12.0, "epoch": 1.5, "loss": 1.23449, "lr": 0.01, "clips_per_s": 20.14, "data_wait_share": 0.031,
        "skipped_steps": 0.0, "bad_videos": 0.0, "videos_tried": 40.0}
ACCURACY = {f"{split}_{kind}_top{k}": value for split in ("val", "test") for kind, value in (("video", 0.5), ("clip", 0.25))
            for k in (1, 5)}


def test_report_lines_are_compact() -> None:
    assert step_line(STEP) == "step 12  epoch 1.50  loss 1.234  lr 0.01  clips/s 20.1  data-wait 3%"
    trouble = step_line({**STEP, "skipped_steps": 2.0, "bad_videos": 3.0})
    assert trouble.endswith("data-wait 3%  skipped steps 2  bad videos 3 of 40")
    val = {key: value for key, value in ACCURACY.items() if key.startswith("val")}
    assert epoch_line(1, val) == "epoch 1 done  val video top-1 0.500 top-5 0.500  clip top-1 0.250 top-5 0.250"
    final = run_line({**STEP, **ACCURACY})
    assert final.startswith(step_line(STEP) + "  val video top-1 0.500") and "  test video top-1 0.500" in final
    assert run_line(None) == "none reported"


def test_workers_leave_library_noise_out(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("ray")
    from ray.train.v2._internal.execution import context

    quiet_library_logs(use_gpu=False)
    quiet_library_logs(use_gpu=False)  # again, as a restarted worker might: nothing doubles
    assert logging.getLogger(context.__file__).getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("botocore.credentials").getEffectiveLevel() == logging.WARNING
    assert len(logging.getLogger("DeepSpeed").filters) == 2
    with caplog.at_level(logging.INFO):
        logging.getLogger("DeepSpeed").warning("Setting accelerator to CPU. If you have GPU ...")
        logging.getLogger("DeepSpeed").warning("something a user must act on")
        logging.getLogger().info("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")  # a print, in Ray
    assert [r.getMessage() for r in caplog.records] == ["something a user must act on"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated. Please use ...", FutureWarning, stacklevel=1)
    assert not caught


def test_prints_go_to_the_debug_log(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, "octvideo.test"), prints_to_debug_log(logging.getLogger("octvideo.test")):
        print("DeepSpeed op built successfully")
    assert capsys.readouterr().out == ""
    assert [r.getMessage() for r in caplog.records] == ["DeepSpeed op built successfully"]
