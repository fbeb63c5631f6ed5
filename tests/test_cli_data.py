"""``octvideo data synth|check|stats|prepare``: outputs, reports, exit status, storage options and
one-line usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest

from octvideo.cli import main
from octvideo.data.storage_options import merge_storage_options, parse_storage_option
from tests.data.videos import HTML_ERROR_PAGE, truncated, write_bytes

SMALL = ["--duration", "1", "--fps", "10", "--width", "64", "--height", "48", "--gop", "5"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``octvideo argv``, usage errors included."""
    try:
        status = main(list(argv))
    except SystemExit as exit:
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "kinetics"
    options = ["--classes", "2", "--videos-per-class", "3", "--seed", "5", "--val-fraction", "0.34", *SMALL]
    assert main(["data", "synth", str(root), *options]) == 0
    return root


def test_synth_then_check_and_stats_of_a_good_dataset(dataset, capsys):
    status, out, _ = run(capsys, "data", "check", str(dataset / "train.csv"), "--workers", "2")
    assert status == 0
    assert out.strip() == "4 checked (quick), 0 bad"
    status, out, _ = run(capsys, "data", "stats", str(dataset), "--split", "val")
    assert status == 0
    assert "2 videos" in out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert lines["duration"].split("│")[2:6] == ["     2 ", "   1 ", "      1 ", "   1 "]
    assert "64x48 (2)" in lines["resolution"] and "h264 (2)" in lines["codec"]


def test_check_lists_bad_videos_writes_a_report_and_exits_1(dataset, tmp_path, capsys):
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    good = next(dataset.glob("train/*/*.mp4"))
    (tree / "a" / "good.mp4").write_bytes(good.read_bytes())
    write_bytes(tree / "a" / "cut.mp4", truncated(good.read_bytes()))
    write_bytes(tree / "a" / "page.mp4", HTML_ERROR_PAGE)
    write_bytes(tree / "a" / "empty.mp4", b"")
    status, out, _ = run(capsys, "data", "check", str(tree))
    assert status == 1
    assert f"{tree}/a/cut.mp4: truncated (" in out
    assert out.splitlines()[-1] == "4 checked (quick), 3 bad: 1 empty, 1 not a video, 1 truncated"
    report = tmp_path / "report.json"
    status, out, _ = run(capsys, "data", "check", str(tree), "--full", "--report", str(report))
    assert status == 1 and out.strip().endswith(f"report: {report}")
    written = json.loads(report.read_text())
    assert written["summary"] == {"checked": 4, "bad": 3, "by_reason": {"empty": 1, "not a video": 1, "truncated": 1}, "full": True}
    assert [(Path(r["url"]).name, r["reason"]) for r in written["failures"]] == [
        ("cut.mp4", "truncated"), ("empty.mp4", "empty"), ("page.mp4", "not a video")
    ]


def test_check_on_s3_with_storage_options(dataset, s3_server, s3_bucket, capsys):
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3_server.storage_options)
    fs.put(str(dataset), f"{s3_bucket}/kinetics", recursive=True)
    fs.pipe_file(f"{s3_bucket}/kinetics/train/moving_left/zz_bad.mp4", HTML_ERROR_PAGE)
    status, out, _ = run(
        capsys, "data", "check", f"s3://{s3_bucket}/kinetics", "--split", "train",
        "--storage-option", "key=testing", "--storage-option", "secret=testing",
        "--storage-option", f"client_kwargs.endpoint_url={s3_server.endpoint_url}",
        "--storage-option", "client_kwargs.region_name=us-east-1",
        "--report", f"s3://{s3_bucket}/reports/check.csv",
    )
    assert status == 1
    assert out.startswith("5 checked (quick), 1 bad: 1 not a video")
    report = fs.cat_file(f"{s3_bucket}/reports/check.csv").decode()
    assert report.splitlines()[0] == "url,reason,detail"
    assert report.splitlines()[1].startswith(f"s3://{s3_bucket}/kinetics/train/moving_left/zz_bad.mp4,not a video,")


def test_prepare_prints_a_summary_and_resumes(dataset, tmp_path, capsys):
    dst = tmp_path / "prepared"
    argv = ["data", "prepare", str(dataset), str(dst), "--short-side", "32", "--gop", "1", "--workers", "2"]
    status, out, _ = run(capsys, *argv)
    assert status == 0
    assert out.startswith("6 done, 0 skipped, 0 failed in ") and "storage growth" in out
    assert len(list(dst.glob("*/*/*.mp4"))) == 6
    status, out, _ = run(capsys, *argv)
    assert status == 0 and out.startswith("0 done, 6 skipped, 0 failed")


def test_storage_options_parse_json_and_nest():
    pairs = [
        parse_storage_option("anon=true"),
        parse_storage_option("client_kwargs.endpoint_url=http://127.0.0.1:9000"),
        parse_storage_option("client_kwargs.region_name=eu-west-1"),
        parse_storage_option("default_block_size=1048576"),
        parse_storage_option("profile=my profile"),
    ]
    assert merge_storage_options(pairs) == {
        "anon": True,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"},
        "default_block_size": 1048576,
        "profile": "my profile",
    }


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "check"], "the following arguments are required: MANIFEST"),
        (["data", "check", "x.csv", "--workers", "0"], "--workers: expected an integer >= 1"),
        (["data", "stats", "x.csv", "--storage-option", "anon"], "--storage-option: expected KEY=VALUE"),
        (["data", "prepare", "a", "b", "--gop", "2", "--keyframe-interval-sec", "1"], "not allowed with argument"),
        (["data", "frobnicate"], "invalid choice"),
        (["data", "check", "{missing}", "--report", "r.txt"], "must end in .json or .csv"),
        (["data", "check", "{missing}"], "does not exist"),
        (["data", "prepare", "{dataset}", "{tmp}/out", "--short-side", "321"], "short_side must be even"),
        (["data", "synth", "{tmp}/s", "--classes", "99"], "classes must be 1..14"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(dataset, tmp_path, capsys, argv, message):
    argv = [a.format(missing=tmp_path / "missing.csv", dataset=dataset, tmp=tmp_path) for a in argv]
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("octvideo") and message in err, err
    assert "Traceback" not in err and out == ""


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "octvideo.cli", "data", "check", str(tmp_path / "nothing.csv")],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"octvideo data check: error: manifest {tmp_path / 'nothing.csv'} does not exist; "
        "check the URL and storage_options"
    ]
