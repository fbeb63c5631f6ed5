"""Scenario 5: a training split seeded with every kind of bad video. At 5 % (7 of 145: 6 that fail
to decode and one listed without a file) the run finishes its epochs and reports each bad file
once; past ``data.max_bad_fraction`` it stops with one clear error."""

from __future__ import annotations

import json

import fsspec
import pytest

from octvideo.data import write_synthetic_kinetics
from tests.data.videos import HTML_ERROR_PAGE, mp4_box, random_bytes, truncated, write_audio_only
from tests.faults.conftest import FaultStack
from tests.jobs import experiment, submit, tracked_run, write_config

DATA = "s3://octvideo-demo/bad5"
REASONS = {  # file name -> the reason the run must report
    "empty": "empty", "random": "not a video", "error_page": "not a video", "cut": "truncated",
    "corrupt": "corrupt", "audio_only": "no video stream", "missing": "not found",
}


def corrupt(data: bytes) -> bytes:
    """An MP4 with 90 % of its frame data overwritten: every clip of it fails to decode."""
    offset, size = mp4_box(data, b"mdat")
    length = int(size * 0.9)
    start = offset + 8 + (size - 8 - length) // 2
    return data[:start] + random_bytes(length, seed=3) + data[start + length :]


@pytest.fixture(scope="module")
def bad_split(faults: FaultStack, tmp_path_factory) -> dict[str, str]:
    """138 good training videos of 3 classes and one bad file of each kind, in the Kinetics
    layout (CSV rows, ``train/<label>/<id>_<start>_<end>.mp4``); returns bad URL -> reason."""
    write_synthetic_kinetics(DATA, classes=3, videos_per_class=50, duration=1.5, width=64, height=48,
                             val_fraction=0.05, test_fraction=0.05)
    fs = fsspec.filesystem("s3")
    rows = fs.cat(f"{DATA}/train.csv").decode().splitlines()
    label = rows[1].split(",")[0]
    good = fs.cat(next(iter(fs.glob(f"{DATA}/train/{label}/*.mp4"))))
    audio = write_audio_only(tmp_path_factory.mktemp("audio") / "a.m4a").read_bytes()
    contents = {"empty": b"", "random": random_bytes(4096), "error_page": HTML_ERROR_PAGE, "cut": truncated(good),
                "corrupt": corrupt(good), "audio_only": audio}
    bad = {}
    for i, name in enumerate(REASONS):
        youtube_id = f"bad_{name}".ljust(11, "x")[:11]
        url = f"{DATA}/train/{label}/{youtube_id}_{i:06d}_{i + 2:06d}.mp4"
        if name in contents:
            fs.pipe_file(url, contents[name])
        rows.append(f"{label},{youtube_id},{i},{i + 2},train")
        bad[url] = REASONS[name]
    fs.pipe_file(f"{DATA}/train.csv", ("\n".join(rows) + "\n").encode())
    return bad


def bad_experiment(name: str, train_manifest: str) -> dict:
    config = experiment(name, epochs=2, zero_stage=2, every_steps=None)
    config["data"].update(train_manifest=train_manifest, val_manifest=f"{DATA}/val.csv", test_manifest=f"{DATA}/test.csv")
    config["optim"]["batch_size_per_worker"] = 8
    return config


def test_five_percent_bad_videos_are_each_reported_once(faults: FaultStack, bad_split: dict[str, str]) -> None:
    job = submit(faults.stack, write_config("bad5", bad_experiment("bad5", f"{DATA}/train.csv")),
                 runtime_env=faults.runtime_env)
    client, run = tracked_run(faults.stack, "bad5")
    assert run.info.status == "FINISHED"
    path = client.download_artifacts(run.info.run_id, "bad_videos.json", str(faults.stack.folder / "bad5"))
    reported = {url.removeprefix("s3://"): reason for url, reason in json.load(open(path)).items()}
    assert reported == {url.removeprefix("s3://"): reason for url, reason in bad_split.items()}
    # Failed to decode while training (counted against max_bad_fraction), and listed without a file
    # (skipped from the start).
    assert run.data.metrics["epoch/bad_videos"] == len(bad_split) - 1
    assert run.data.metrics["epoch/missing_videos"] == 1
    for url, reason in bad_split.items():  # in the job's log: a line per worker that met it, never more
        if reason == "not found":
            continue
        lines = [line for line in job.stdout.splitlines() if "unreadable video" in line and url.removeprefix("s3://") in line]
        assert 1 <= len(lines) <= 2, (url, lines)


def test_bad_videos_past_the_limit_stop_the_run_with_one_error(faults: FaultStack, bad_split: dict[str, str]) -> None:
    """40 good videos and the bad ones: 6 of 46 fail to decode, past max_bad_fraction 5 %."""
    fs = fsspec.filesystem("s3")
    header, *rows = fs.cat(f"{DATA}/train.csv").decode().splitlines()
    good, bad = rows[:40], rows[-len(bad_split):]
    fs.pipe_file(f"{DATA}/train20.csv", ("\n".join([header, *good, *bad]) + "\n").encode())

    job = submit(faults.stack, write_config("bad20", bad_experiment("bad20", f"{DATA}/train20.csv")),
                 runtime_env=faults.runtime_env, succeed=False)
    assert job.returncode != 0
    # One line from the pipeline; `ray job submit` repeats the job's last lines when it fails.
    errors = sorted({line for line in (job.stdout + job.stderr).splitlines() if line.startswith("kinetics.py: error:")})
    assert len(errors) == 1, errors
    assert "TooManyBadVideos" in errors[0] and "more than max_bad_fraction=5.0%" in errors[0], errors[0]
    print(f"bad videos past the limit: {errors[0][:300]}")
    _, run = tracked_run(faults.stack, "bad20")
    assert run.info.status == "FAILED"
