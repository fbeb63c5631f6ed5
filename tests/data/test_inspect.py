"""The dataset scan: the integrity check finds every broken kind with its reason (locally and on
S3), probe statistics are right for known videos, and reports round-trip."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from fractions import Fraction
from pathlib import Path

import fsspec
import pytest

from octvideo.data.decode import VideoInfo
from octvideo.data.inspect import (
    CHECK_COLUMNS,
    check_failures,
    check_video,
    check_videos,
    probe_videos,
    report_format,
    scan,
    summarize,
    write_report,
)
from octvideo.data.storage import NO_RETRY

from .videos import (
    HTML_ERROR_PAGE,
    random_bytes,
    truncated,
    with_corrupt_mdat,
    with_unknown_codec,
    write_audio_only,
    write_bytes,
    write_video,
)

# Broken kind -> the reason the quick check gives, and the full check's where it differs.
QUICK = {
    "good": None,
    "good mkv": None,
    "good mpegts": None,
    "empty": "empty",
    "random bytes": "not a video",
    "html page": "not a video",
    "truncated, index at the end": "truncated",
    "truncated, index first": "truncated",
    "corrupt packets": None,  # damage in the middle: only decoding every frame finds it
    "audio only": "no video stream",
    "unknown codec": "unsupported codec",
    "missing": "not found",
}
FULL = QUICK | {"corrupt packets": "corrupt"}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inspect")
    good = write_video(d / "good.mp4", num_frames=90, gop=10)
    faststart = write_video(d / "faststart.mp4", num_frames=90, faststart=True)
    data = good.read_bytes()
    return {
        "good": good,
        "good mkv": write_video(d / "good.mkv", num_frames=50, fps=25, width=80, height=48),
        "good mpegts": write_video(d / "good.ts", num_frames=40, fps=20, width=48, height=64),
        "empty": write_bytes(d / "empty.mp4", b""),
        "random bytes": write_bytes(d / "random.mp4", random_bytes(4096)),
        "html page": write_bytes(d / "page.mp4", HTML_ERROR_PAGE),
        "truncated, index at the end": write_bytes(d / "cut.mp4", truncated(data)),
        "truncated, index first": write_bytes(d / "cut_first.mp4", truncated(faststart.read_bytes())),
        "corrupt packets": write_bytes(d / "corrupt.mp4", with_corrupt_mdat(data)),
        "audio only": write_audio_only(d / "audio.m4a"),
        "unknown codec": write_bytes(d / "codec.mp4", with_unknown_codec(data)),
        "missing": d / "missing.mp4",
    }


@pytest.mark.parametrize("full", [False, True], ids=["quick", "full"])
def test_check_gives_each_broken_kind_its_reason(files, full):
    by_url = {str(path): kind for kind, path in files.items()}
    results = list(check_videos(list(by_url), full=full, workers=3))
    assert len(results) == len(files)
    expected = FULL if full else QUICK
    for result in results:
        kind = by_url[result.url]
        assert result.reason == expected[kind], (kind, result)
        assert result.ok == (expected[kind] is None)
        assert bool(result.detail) != result.ok
    rows = check_failures(results)
    assert [row["url"] for row in rows] == sorted(row["url"] for row in rows)
    assert {by_url[row["url"]] for row in rows} == {k for k, v in expected.items() if v}


def test_a_video_cut_after_its_index_fails_at_the_end(tmp_path):
    # Index first, frame data cut: the header is whole, the last frames are missing.
    whole = write_video(tmp_path / "whole.mp4", num_frames=90, faststart=True).read_bytes()
    cut = write_bytes(tmp_path / "cut.mp4", truncated(whole, keep=0.8))
    result = check_video(str(cut), retry=NO_RETRY)
    assert result.reason == "truncated", result


def test_check_on_s3(files, s3_server, s3_bucket):
    options = s3_server.storage_options
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
    kinds = ["good", "truncated, index at the end", "html page", "corrupt packets"]
    for kind in kinds:
        fs.put(str(files[kind]), f"{s3_bucket}/videos/{files[kind].name}")
    urls = {f"s3://{s3_bucket}/videos/{files[k].name}": k for k in kinds}
    urls[f"s3://{s3_bucket}/videos/missing.mp4"] = "missing"
    results = {r.url: r for r in check_videos(list(urls), options, full=True, workers=2)}
    assert {urls[u]: r.reason for u, r in results.items()} == {k: FULL[k] for k in urls.values()}


def test_probe_statistics_of_known_videos(files):
    urls = [str(files[k]) for k in ("good", "good mkv", "good mpegts", "html page")]
    results = list(probe_videos(urls, workers=2))
    failed = [r for r in results if r.error is not None]
    assert [(r.url, r.error.reason) for r in failed] == [(str(files["html page"]), "not a video")]
    rows = {row.name: row for row in summarize(r.info for r in results if r.info)}
    duration = rows["duration (s)"]
    # 90 frames at 30 fps, 50 at 25 fps, 40 at 20 fps: 3 s, 2 s, 2 s.
    assert duration.count == 3
    assert duration.minimum == pytest.approx(2.0, abs=0.05)
    assert duration.median == pytest.approx(2.0, abs=0.05)
    assert duration.maximum == pytest.approx(3.0, abs=0.05)
    assert (rows["fps"].minimum, rows["fps"].median, rows["fps"].maximum) == (20, 25, 30)
    assert (rows["width"].minimum, rows["width"].maximum) == (48, 80)
    assert (rows["short side"].minimum, rows["short side"].maximum) == (48, 48)
    assert rows["short side"].most_common == [(48, 3)]
    assert sorted(rows["resolution"].most_common) == [("48x64", 1), ("64x48", 1), ("80x48", 1)]
    assert rows["codec"].most_common == [("h264", 3)]
    assert rows["codec"].minimum is None


def test_summary_groups_near_equal_rates_and_skips_unknowns():
    infos = [
        VideoInfo(10.0, 30000 / 1001, 340, 256, "h264", 300),
        VideoInfo(10.02, 29.97, 340, 256, "h264", None),
        VideoInfo(9.5, None, 456, 256, "vp9", 285),
    ]
    rows = {row.name: row for row in summarize(infos)}
    assert rows["fps"].count == 2 and rows["fps"].most_common == [(29.97, 2)]
    assert rows["frames"].count == 2
    assert rows["duration (s)"].most_common[0] == (10.0, 2)
    assert rows["codec"].most_common == [("h264", 2), ("vp9", 1)]
    assert {row.count for row in summarize([])} == {0}


@pytest.mark.parametrize("name", ["report.json", "report.csv"])
def test_report_round_trips(name):
    url = f"memory://inspect-report/{name}"
    rows = [{"url": "s3://b/a.mp4", "reason": "truncated", "detail": 'cut, "at" 1 s'}]
    write_report(rows, CHECK_COLUMNS, url, summary={"checked": 3, "bad": 1})
    text = fsspec.open(url, "r").open().read()
    if name.endswith(".json"):
        assert json.loads(text) == {"summary": {"checked": 3, "bad": 1}, "failures": rows}
    else:
        assert list(csv.DictReader(io.StringIO(text))) == rows
    write_report([], CHECK_COLUMNS, url)  # an empty report still has its header / keys
    assert fsspec.open(url, "r").open().read().strip()


def test_report_name_must_say_its_format():
    assert report_format("s3://bucket/dir/Report.JSON") == "json"
    for url in ("report.txt", "report", "dir.json/report"):
        with pytest.raises(ValueError, match=r"\.json or \.csv"):
            report_format(url)


def test_scan_runs_in_parallel_bounded_and_lazily():
    started, active, peak = [], [0], [0]
    lock = threading.Lock()

    def work(item: int) -> int:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.01)
        with lock:
            active[0] -= 1
        return item * 2

    def items():
        for i in range(20):
            started.append(i)
            yield i

    results = scan(work, items(), workers=3)
    first = next(results)
    assert len(started) <= 7  # the pool takes at most 2 * workers items ahead of the consumer
    assert sorted([first, *results]) == [2 * i for i in range(20)]
    assert 1 < peak[0] <= 3
    with pytest.raises(ValueError, match="workers"):
        list(scan(work, [1], workers=0))


def test_scan_raises_a_worker_error():
    def work(item: int) -> int:
        if item == 3:
            raise KeyError(item)
        return item

    with pytest.raises(KeyError):
        list(scan(work, range(6), workers=2))


def test_vfr_frame_rate_is_reported(tmp_path):
    path = write_video(tmp_path / "vfr.mkv", frame_times=[Fraction(ms, 1000) for ms in (0, 10, 50, 500, 1000)])
    [result] = probe_videos([str(path)])
    assert result.info.duration_sec == pytest.approx(1.0, abs=0.05)
    assert check_video(str(path), full=True).ok
