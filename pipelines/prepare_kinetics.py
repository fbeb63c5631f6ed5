"""Ray job: ``octvideo data prepare`` across a Ray cluster's CPUs.

    ray job submit --working-dir . -- python pipelines/prepare_kinetics.py SRC_URL DST_URL [...]
    python pipelines/prepare_kinetics.py SRC_URL DST_URL [...]   # starts a local Ray

Takes the arguments of ``octvideo data prepare`` (less ``--workers``: every CPU of the cluster
works, one video per task). The driver lists the work (``plan_prepare``: finished videos are
skipped, so a rerun resumes), runs ``prepare_video`` as Ray tasks with ``num_cpus=1`` (a bounded
number in flight), logs progress, copies the manifests last and prints the same summary.
Exit status: 0 (failed videos are listed), 1 with ``--strict`` when any video failed, 2 for a
usage error: raw downloads always hold some broken files, which should not fail the job.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import ray

from octvideo.cli import add_prepare_arguments, prepare_settings, prepare_storage_options
from octvideo.data.inspect import report_format, write_report
from octvideo.data.prepare import (
    PREPARE_COLUMNS,
    PrepareResult,
    PrepareSettings,
    PrepareSummary,
    PrepareTask,
    copy_aux_files,
    plan_prepare,
    prepare_video,
)

log = logging.getLogger("prepare_kinetics")

PROGRESS_EVERY_SEC = 10.0


@ray.remote(num_cpus=1)
def _prepare(
    task: PrepareTask,
    settings: PrepareSettings,
    storage_options: dict[str, Any],
    dst_storage_options: dict[str, Any] | None,
) -> PrepareResult:
    return prepare_video(task, settings, storage_options, dst_storage_options)


def run(args: argparse.Namespace) -> int:
    settings = prepare_settings(args)
    if args.report:
        report_format(args.report)
    options, dst_options = prepare_storage_options(args)
    started = time.monotonic()
    plan = plan_prepare(args.src_url, args.dst_url, settings, options, dst_options, root=args.root)
    summary = PrepareSummary()
    for task in plan.finished:
        summary.add(PrepareResult(task.src, task.dst, "skipped"))

    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS (set by `ray job submit`) or a new local Ray
    max_in_flight = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    shared = [ray.put(value) for value in (settings, options, dst_options)]
    todo, in_flight, last_log = list(reversed(plan.tasks)), [], time.monotonic()
    log.info("%d video(s) to encode on %d CPU(s); %d finished before", len(todo), max_in_flight // 2,
             len(plan.finished))
    while todo or in_flight:
        while todo and len(in_flight) < max_in_flight:
            in_flight.append(_prepare.remote(todo.pop(), *shared))
        done, in_flight = ray.wait(in_flight, num_returns=1)
        summary.add(ray.get(done[0]))
        if time.monotonic() - last_log > PROGRESS_EVERY_SEC or not (todo or in_flight):
            last_log = time.monotonic()
            log.info("%d/%d: %s", summary.done + summary.skipped + summary.failed,
                     len(plan.tasks) + len(plan.finished), summary.line(last_log - started))
    copy_aux_files(plan, options, dst_options)

    for row in summary.failure_rows():
        print(f"{row['src']}: {row['reason']} ({row['detail']})")
    if args.report:
        write_report(
            summary.failure_rows(), PREPARE_COLUMNS, args.report, dst_options or options,
            summary=summary.totals(),
        )
    print(summary.line(time.monotonic() - started))
    return 1 if summary.failed and args.strict else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prepare_kinetics.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prepare_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return run(args)
    except (ValueError, OSError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
