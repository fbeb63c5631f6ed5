"""The ``data prepare`` command, shared by ``octvideo data prepare`` and the Ray job
``pipelines/prepare_kinetics.py``: its arguments, and plan, run and report.

Importing this module is cheap (no torch, PyAV or fsspec): the CLI builds its parser from it.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from octvideo.data.storage_options import (
    add_storage_option_argument,
    merge_storage_options,
    parse_storage_option,
)
from octvideo.progress import progress

if TYPE_CHECKING:
    from octvideo.data.prepare import PrepareSettings


def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``data prepare`` but ``--workers``, shared with ``pipelines/prepare_kinetics.py``."""
    p.add_argument("src_url", metavar="SRC_URL", help="folder of raw videos, or a manifest (CSV or list)")
    p.add_argument("dst_url", metavar="DST_URL", help="output folder (mirrors SRC_URL's tree)")
    p.add_argument("--root", help="with a manifest SRC_URL: the folder its paths start from")
    p.add_argument("--short-side", type=int, default=320, help="pixels, even (default 320)")
    keyframes = p.add_mutually_exclusive_group()
    keyframes.add_argument("--gop", type=int, default=None, help="keyframe every GOP frames (default 30; 1: all-intra)")
    keyframes.add_argument("--keyframe-interval-sec", type=float, default=None, help="keyframe every this many seconds")
    p.add_argument("--crf", type=int, default=23, help="x264 quality, 0..51, lower is better (default 23)")
    p.add_argument("--preset", default="veryfast", help="x264 preset (default veryfast)")
    p.add_argument("--report", metavar="OUT", help="write the failures to OUT (.json or .csv, any fsspec URL)")
    p.add_argument("--strict", action="store_true", help="exit status 1 when any video failed")
    add_storage_option_argument(p)
    p.add_argument(
        "--dst-storage-option", dest="dst_storage_options", action="append", type=parse_storage_option,
        metavar="KEY=VALUE", help="storage option for DST_URL on another store (default: --storage-option's)",
    )


def prepare_settings(args: argparse.Namespace) -> PrepareSettings:
    """The PrepareSettings named by parsed :func:`add_prepare_arguments` arguments."""
    from octvideo.data.prepare import PrepareSettings

    gop = args.gop if args.gop is not None or args.keyframe_interval_sec is not None else 30
    return PrepareSettings(args.short_side, gop, args.keyframe_interval_sec, args.crf, args.preset)


def prepare_storage_options(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(source, destination) storage options of parsed :func:`add_prepare_arguments` arguments."""
    dst = merge_storage_options(args.dst_storage_options) if args.dst_storage_options else None
    return merge_storage_options(args.storage_options), dst


def run_prepare_command(args: argparse.Namespace, on_ray: bool) -> int:
    """``data prepare`` on this machine, or (``on_ray``) across a Ray cluster: plan, run, report.
    Prints the failures and a summary line (the command's output); returns the exit status."""
    from octvideo.data.inspect import report_format, write_report
    from octvideo.data.prepare import PREPARE_COLUMNS, PrepareSummary, plan_prepare, run_prepare

    settings = prepare_settings(args)
    if args.report:
        report_format(args.report)
    options, dst_options = prepare_storage_options(args)
    started = time.monotonic()
    plan = plan_prepare(args.src_url, args.dst_url, settings, options, dst_options, root=args.root)
    summary = PrepareSummary()
    results = run_prepare(plan, options, dst_options, workers=getattr(args, "workers", None), on_ray=on_ray)
    for result in progress(results, len(plan.tasks) + len(plan.finished), "preparing"):
        summary.add(result)
    rows = summary.failure_rows()
    for row in rows:
        print(f"{row['src']}: {row['reason']} ({row['detail']})")
    if args.report:
        write_report(rows, PREPARE_COLUMNS, args.report, dst_options or options, summary=summary.totals())
    print(summary.line(time.monotonic() - started))
    return 1 if summary.failed and args.strict else 0
