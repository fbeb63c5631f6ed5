"""Re-encoding for training: output size, keyframes and timestamps checked by decoding, mirrored
tree and manifests, failures listed, resumability (locally and S3 to S3), and the Ray job."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import fsspec
import pytest

from octvideo.data import prepare as prepare_module
from octvideo.data.inspect import check_videos
from octvideo.data.manifest import load_manifest
from octvideo.data.prepare import (
    SETTINGS_NAME,
    PrepareSettings,
    PrepareSummary,
    PrepareTask,
    plan_prepare,
    prepare_video,
    run_prepare,
)
from octvideo.data.synthetic import write_synthetic_kinetics

from .videos import HTML_ERROR_PAGE, truncated, with_corrupt_mdat, write_bytes, write_video

REPO = Path(__file__).resolve().parents[2]
SETTINGS = PrepareSettings(short_side=32, gop=5)
# 96x64 sources at 15 fps, 2 s: outputs are 48x32 with a keyframe every 5 frames.
SYNTH = dict(duration=2.0, fps=15, width=96, height=64, gop=15, val_fraction=0.0, test_fraction=0.0)
BROKEN = "train/moving_left/cut.mp4"
MKV = "train/moving_right/other.mkv"


def stream_facts(path: str | Path) -> dict:
    """What decoding an output shows: size, format, keyframe positions (display order), times."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = sorted((p for p in container.demux(stream) if p.size), key=lambda p: p.pts)
        start = stream.start_time or 0
        facts = dict(
            codec=stream.codec_context.name,
            size=(stream.codec_context.width, stream.codec_context.height),
            pix_fmt=stream.codec_context.pix_fmt,
            streams=len(container.streams),
            keyframes=[i for i, p in enumerate(packets) if p.is_keyframe],
            times=[float((p.pts - start) * stream.time_base) for p in packets],
        )
    return facts


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A synthetic Kinetics (2 classes x 2 train videos), a truncated video, an MKV one, a list."""
    root = tmp_path_factory.mktemp("prepare") / "raw"
    write_synthetic_kinetics(str(root), 2, 2, seed=3, **SYNTH)
    good = next(root.glob("train/moving_left/*.mp4")).read_bytes()
    write_bytes(root / BROKEN, truncated(good))
    write_video(root / MKV, num_frames=30, fps=15, width=64, height=96)
    (root / "list.txt").write_text(f"{MKV} 1\n{BROKEN} 0\n")
    return root


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory):
    dst = tmp_path_factory.mktemp("prepared") / "out"
    plan = plan_prepare(str(source), str(dst), SETTINGS)
    summary = PrepareSummary()
    for result in run_prepare(plan, workers=2):
        summary.add(result)
    return dst, plan, summary


def test_outputs_have_the_short_side_keyframes_and_timestamps(source, prepared):
    dst, plan, summary = prepared
    assert (summary.done, summary.skipped, summary.failed) == (5, 0, 1)
    for task in plan.tasks:
        if task.src.endswith(BROKEN):
            continue
        out, raw = stream_facts(task.dst), stream_facts(task.src)
        landscape = raw["size"][0] > raw["size"][1]
        assert out["size"] == ((48, 32) if landscape else (32, 48))
        assert (out["codec"], out["pix_fmt"], out["streams"]) == ("h264", "yuv420p", 1)
        assert out["keyframes"] == list(range(0, 30, 5))
        assert out["times"] == pytest.approx(raw["times"], abs=1e-3)  # every frame, same times
    assert summary.bytes_in > 0 and summary.bytes_out > 0
    assert summary.growth == summary.bytes_out / summary.bytes_in


def test_tree_is_mirrored_with_manifests_and_failures_listed(source, prepared):
    dst, plan, summary = prepared
    made = {str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()}
    videos = {str(p.relative_to(source)) for p in source.rglob("*.mp4")} - {BROKEN}
    assert made == videos | {
        "train/moving_right/other.mp4", "train.csv", "val.csv", "test.csv", "label_map.json",
        "list.txt", SETTINGS_NAME,
    }  # no partial files, nothing for the broken video
    for name in ("train.csv", "label_map.json"):
        assert (dst / name).read_bytes() == (source / name).read_bytes()
    assert (dst / "list.txt").read_text() == f"{MKV[:-4]}.mp4 1\n{BROKEN} 0\n"
    assert json.loads((dst / SETTINGS_NAME).read_text())["gop"] == 5
    assert len(load_manifest(str(dst / "train.csv"))) == 4
    [failure] = summary.failure_rows()
    assert failure["src"] == str(source / BROKEN) and failure["reason"] == "truncated"


def test_a_rerun_skips_finished_videos_and_redoes_partial_ones(source, prepared, tmp_path):
    dst = tmp_path / "out"
    shutil.copytree(prepared[0], dst)
    again = plan_prepare(str(source), str(dst), SETTINGS)
    assert [t.src for t in again.tasks] == [str(source / BROKEN)]  # only the failure is retried
    assert len(again.finished) == 5
    # A run that died while writing left a partial file: it is not taken for a finished video.
    victim = again.finished[0].dst
    os.replace(victim, victim + prepare_module.PARTIAL_SUFFIX)
    Path(victim + prepare_module.PARTIAL_SUFFIX).write_bytes(b"half a video")
    resumed = plan_prepare(str(source), str(dst), SETTINGS)
    assert victim in [t.dst for t in resumed.tasks]
    results = {r.dst: r for r in run_prepare(resumed, workers=1)}
    assert results[victim].status == "done"
    assert [r.status for r in results.values()].count("skipped") == 4
    assert stream_facts(victim)["keyframes"] == list(range(0, 30, 5))
    assert not Path(victim + prepare_module.PARTIAL_SUFFIX).exists()


def test_a_failed_encode_leaves_neither_output_nor_partial(source, tmp_path, monkeypatch):
    task = PrepareTask(str(next(source.glob("train/moving_left/*.mp4"))), str(tmp_path / "v.mp4"))

    def dies_halfway(src, options, out_path, settings):
        Path(out_path).write_bytes(b"half a video")
        raise RuntimeError("killed")

    monkeypatch.setattr(prepare_module, "_transcode", dies_halfway)
    with pytest.raises(RuntimeError):
        prepare_video(task, SETTINGS)
    assert list(tmp_path.iterdir()) == []


def test_other_settings_are_refused_for_a_prepared_destination(source, prepared):
    with pytest.raises(ValueError, match="prepared with"):
        plan_prepare(str(source), str(prepared[0]), PrepareSettings(short_side=32, gop=1))


@pytest.mark.parametrize(
    "settings, keyframes",
    [
        (PrepareSettings(short_side=32, gop=1), list(range(30))),  # all-intra
        (PrepareSettings(short_side=32, gop=None, keyframe_interval_sec=0.5), [0, 8, 16, 24]),
    ],
    ids=["gop 1", "0.5 s"],
)
def test_keyframe_interval(source, tmp_path, settings, keyframes):
    src = next(source.glob("train/moving_right/*.mp4"))
    result = prepare_video(PrepareTask(str(src), str(tmp_path / "v.mp4")), settings)
    assert result.status == "done"
    assert stream_facts(tmp_path / "v.mp4")["keyframes"] == keyframes


def test_variable_frame_rate_and_untimed_inputs(tmp_path):
    times_ms = [0, 10, 50, 60, 200, 210, 400, 430, 700, 1000]
    vfr = write_video(tmp_path / "vfr.mkv", frame_times=[Fraction(ms, 1000) for ms in times_ms])
    prepare_video(PrepareTask(str(vfr), str(tmp_path / "vfr.mp4")), SETTINGS)
    assert stream_facts(tmp_path / "vfr.mp4")["times"] == pytest.approx([ms / 1000 for ms in times_ms])
    raw = write_video(tmp_path / "raw.h264", num_frames=12)  # no timestamps at all
    prepare_video(PrepareTask(str(raw), str(tmp_path / "raw.mp4")), SETTINGS)
    facts = stream_facts(tmp_path / "raw.mp4")
    assert len(facts["times"]) == 12 and facts["keyframes"] == [0, 5, 10]


@pytest.mark.parametrize(
    "kind, reason",
    [("index first, cut", "truncated"), ("corrupt packets", "corrupt"), ("html page", "not a video"),
     ("missing", "not found")],
)
def test_broken_inputs_fail_with_their_reason_and_leave_nothing(tmp_path, kind, reason):
    good = write_video(tmp_path / "good.mp4", num_frames=90, gop=10, faststart=kind != "corrupt packets")
    data = good.read_bytes()
    src = tmp_path / "in.mp4"
    if kind == "index first, cut":
        write_bytes(src, truncated(data, keep=0.7))
    elif kind == "corrupt packets":
        write_bytes(src, with_corrupt_mdat(data))
    elif kind == "html page":
        write_bytes(src, HTML_ERROR_PAGE)
    result = prepare_video(PrepareTask(str(src), str(tmp_path / "out" / "v.mp4")), SETTINGS)
    assert (result.status, result.reason) == ("failed", reason), result
    assert list((tmp_path / "out").iterdir()) == []


def test_a_manifest_source_prepares_its_videos_only(source, tmp_path):
    plan = plan_prepare(str(source / "list.txt"), str(tmp_path / "out"), SETTINGS)
    assert [t.dst for t in plan.tasks] == [str(tmp_path / "out" / p) for p in (BROKEN, "train/moving_right/other.mp4")]
    assert [dst for _, dst in plan.aux] == [str(tmp_path / "out" / n) for n in ("label_map.json", "list.txt")]


def test_s3_to_s3(source, s3_server, s3_bucket):
    options = s3_server.storage_options
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
    for path in source.rglob("*"):
        if path.is_file() and path.suffix in (".mp4", ".csv", ".json") and "moving_left" not in str(path):
            fs.put(str(path), f"{s3_bucket}/raw/{path.relative_to(source)}")
    fs.put(str(source / BROKEN), f"{s3_bucket}/raw/{BROKEN}")
    src, dst = f"s3://{s3_bucket}/raw", f"s3://{s3_bucket}/prepared"
    summary = PrepareSummary()
    for result in run_prepare(plan_prepare(src, dst, SETTINGS, options), options, workers=2):
        summary.add(result)
    assert (summary.done, summary.failed) == (2, 1)
    listed = sorted(p.split("/prepared/", 1)[1] for p in fs.find(f"{s3_bucket}/prepared"))
    videos = [p for p in listed if p.endswith(".mp4")]
    assert len(videos) == 2 and BROKEN not in listed  # only finished videos have keys
    assert set(listed) - set(videos) == {"train.csv", "val.csv", "test.csv", "label_map.json", SETTINGS_NAME}
    urls = [f"{dst}/{v}" for v in videos]
    assert all(r.ok for r in check_videos(urls, options, full=True))
    rerun = plan_prepare(src, dst, SETTINGS, options)
    assert len(rerun.finished) == 2 and [t.src for t in rerun.tasks] == [f"{src}/{BROKEN}"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(short_side=321), "even"),
        (dict(gop=0), "gop"),
        (dict(gop=None), "exactly one"),
        (dict(gop=5, keyframe_interval_sec=1.0), "exactly one"),
        (dict(gop=None, keyframe_interval_sec=0), "keyframe_interval_sec"),
        (dict(crf=60), "crf"),
        (dict(preset="quick"), "preset"),
    ],
)
def test_bad_settings_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrepareSettings(**kwargs)


def test_bad_locations_are_value_errors(source, tmp_path):
    with pytest.raises(ValueError, match="inside the source"):
        plan_prepare(str(source), str(source / "prepared"), SETTINGS)
    with pytest.raises(ValueError, match="does not exist"):
        plan_prepare(str(tmp_path / "nothing"), str(tmp_path / "out"), SETTINGS)


def test_ray_job_prepares_and_resumes(source, tmp_path):
    src = tmp_path / "raw"
    shutil.copytree(source / "train" / "moving_left", src)  # 2 good videos and the broken one
    dst = tmp_path / "out"
    command = [sys.executable, str(REPO / "pipelines" / "prepare_kinetics.py"), str(src), str(dst),
               "--short-side", "32", "--gop", "5", "--report", str(tmp_path / "failures.json")]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]  # a broken input is listed, not a failed job
    assert "2 done, 0 skipped, 1 failed" in run.stdout
    assert [r["reason"] for r in json.loads((tmp_path / "failures.json").read_text())["failures"]] == ["truncated"]
    for video in src.glob("*.mp4"):
        if video.name != "cut.mp4":
            assert stream_facts(dst / video.name)["keyframes"] == list(range(0, 30, 5))
    assert not (dst / "cut.mp4").exists()
    rerun = subprocess.run(command + ["--strict"], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert "0 done, 2 skipped, 1 failed" in rerun.stdout, rerun.stderr[-3000:]
    assert rerun.returncode == 1  # --strict: any failed video fails the job
