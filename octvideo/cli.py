"""The ``octvideo`` command: ``octvideo profile ...``, ``octvideo data synth|check|stats|prepare ...``,
``octvideo predict ...`` (more subcommands join as they land).

Exit status: 0 on success; 1 when ``data check`` finds a bad video, ``data prepare`` fails on one
or ``predict`` cannot read one; 2 for a usage error (one line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from octvideo.data.prepare_command import add_prepare_arguments, run_prepare_command
from octvideo.data.storage_options import add_storage_option_argument, merge_storage_options
from octvideo.progress import progress


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``octvideo data check: error: ...``) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_tuple(text: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,2, got {text!r}") from None  # says less


def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="parameters, MACs and activation memory of a model, against alpha = 0")
    p.add_argument("--model", required=True, help="registered model name (see --list)")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--frames", type=_positive_int, default=8, help="input frames (slow-pathway frames for SlowFast)")
    p.add_argument("--size", type=_positive_int, default=224, help="input height and width")
    p.add_argument("--octave-pool", type=_int_tuple, default=None, help="e.g. 1,2,2 (spatial) or 2,2,2")
    p.add_argument("--num-classes", type=_positive_int, default=None)
    p.add_argument("--width", type=_positive_int, default=None, help="base channel width (default: the model's)")
    p.add_argument("--layers", action="store_true", help="also print every layer")
    p.set_defaults(run=_run_profile)


def _run_profile(args: argparse.Namespace) -> int:
    from octvideo.profile import format_profile, profile_by_name

    kwargs = {k: v for k, v in (("num_classes", args.num_classes), ("width", args.width)) if v is not None}
    profile, baseline = profile_by_name(
        args.model, args.alpha, frames=args.frames, size=args.size, octave_pool=args.octave_pool, **kwargs
    )
    print(f"{args.model} alpha={args.alpha} vs alpha=0")
    print(format_profile(profile, baseline, per_layer=args.layers))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _add_manifest(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", metavar="MANIFEST", help="Kinetics CSV, 'path label' list or class-folder tree")
    p.add_argument("--root", help="the folder the manifest's paths start from (default: its folder)")
    p.add_argument("--split", help="keep one split (train, val, test) of a Kinetics CSV or tree")
    p.add_argument("--workers", type=_positive_int, default=None, help="threads (default: cores + 4, at most 32)")
    add_storage_option_argument(p)


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="make, check, summarize and re-encode video datasets")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="{synth,check,stats,prepare}")

    p = commands.add_parser("synth", help="write a synthetic Kinetics (classes told apart by motion only)")
    p.add_argument("out_url", metavar="OUT_URL", help="an empty or new folder (any fsspec URL)")
    p.add_argument("--classes", nargs="+", default=["4"], metavar="N_OR_NAME",
                   help="how many classes (the first N motions) or their names (see octvideo.data.synthetic.MOTIONS)")
    p.add_argument("--videos-per-class", type=_positive_int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per video")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--gop", type=int, default=60, help="keyframe interval in frames")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--workers", type=_positive_int, default=1, help="encoding processes")
    add_storage_option_argument(p)
    p.set_defaults(run=_run_synth)

    p = commands.add_parser(
        "check", help="open and decode every video of a manifest; list the unreadable ones",
        description="The quick check (default) reads the header and decodes the first two and the last "
        "two frames: it finds missing, empty, non-video, audio-only and truncated files and unknown "
        "codecs. --full decodes every frame and also finds corrupt data in the middle of a file. "
        "Exit status 1 when any video is bad.",
    )
    _add_manifest(p)
    p.add_argument("--full", action="store_true", help="decode every frame (slower; finds corrupt packets)")
    p.add_argument("--report", metavar="OUT", help="write the bad videos to OUT (.json or .csv, any fsspec URL)")
    p.set_defaults(run=_run_check)

    p = commands.add_parser("stats", help="duration, resolution, frame rate and codec summaries of the videos")
    _add_manifest(p)
    p.set_defaults(run=_run_stats)

    p = commands.add_parser(
        "prepare", help="re-encode videos to a short side and keyframe interval (H.264, no audio), resumably",
        description="Broken inputs are listed (and reported with --report); the others are done. Exit "
        "status 0 unless --strict and a video failed: raw downloads always hold some broken files.",
    )
    add_prepare_arguments(p)
    p.add_argument("--workers", type=_positive_int, default=None, help="videos encoded at once (default: cores)")
    p.set_defaults(run=_run_prepare)


def _counts(counter: Counter) -> str:
    """``3 truncated, 1 empty``: most frequent first, ties by name."""
    return ", ".join(f"{n} {key}" for key, n in sorted(counter.items(), key=lambda item: (-item[1], item[0])))


def _run_synth(args: argparse.Namespace) -> int:
    from octvideo.data.synthetic import write_synthetic_kinetics

    classes = _positive_int(args.classes[0]) if len(args.classes) == 1 and args.classes[0].isdigit() else args.classes
    counts = write_synthetic_kinetics(
        args.out_url, classes, args.videos_per_class, args.seed,
        duration=args.duration, fps=args.fps, width=args.width, height=args.height, gop=args.gop,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, workers=args.workers,
        storage_options=merge_storage_options(args.storage_options),
    )
    splits = ", ".join(f"{n} {split}" for split, n in counts.items())
    print(f"wrote {sum(counts.values())} videos to {args.out_url}: {splits}")
    return 0


def _video_urls(args: argparse.Namespace) -> list[str]:
    from octvideo.data.manifest import load_manifest
    from octvideo.data.storage import storage_error_message, storage_errors

    try:
        manifest = load_manifest(args.manifest, args.root, args.split, merge_storage_options(args.storage_options))
    except storage_errors() as err:  # no credentials, no endpoint, access denied: name the manifest
        raise ValueError(storage_error_message(args.manifest, err)) from err
    return [entry.url for entry in manifest]


def _run_check(args: argparse.Namespace) -> int:
    from octvideo.data.inspect import CHECK_COLUMNS, check_failures, check_videos, report_format, write_report

    options = merge_storage_options(args.storage_options)
    if args.report:  # a bad report name fails before the scan, not after it
        report_format(args.report)
    urls = _video_urls(args)
    results = list(progress(check_videos(urls, options, full=args.full, workers=args.workers), len(urls), "checking"))
    failures = check_failures(results)
    reasons = Counter(row["reason"] for row in failures)
    summary = f"{len(results)} checked ({'full' if args.full else 'quick'}), {len(failures)} bad"
    if reasons:
        summary += f": {_counts(reasons)}"
    if args.report:
        totals = {"checked": len(results), "bad": len(failures), "by_reason": dict(reasons), "full": args.full}
        write_report(failures, CHECK_COLUMNS, args.report, options, summary=totals)
        summary += f"; report: {args.report}"
    else:
        for row in failures:
            print(f"{row['url']}: {row['reason']} ({row['detail']})")
    print(summary)
    return 1 if failures else 0


def _run_stats(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from octvideo.data.inspect import probe_videos, summarize

    urls = _video_urls(args)
    probes = probe_videos(urls, merge_storage_options(args.storage_options), workers=args.workers)
    results = list(progress(probes, len(urls), "probing"))
    table = Table(title=f"{args.manifest}: {len(results)} videos")
    for column in ("", "count", "min", "median", "max", "most common (videos)"):
        table.add_column(column, justify="left" if column in ("", "most common (videos)") else "right")
    for row in summarize(r.info for r in results if r.info is not None):
        table.add_row(
            row.name, str(row.count), *(_number(v) for v in (row.minimum, row.median, row.maximum)),
            ", ".join(f"{_number(value)} ({n})" for value, n in row.most_common),
        )
    Console(width=max(Console().width, 110)).print(table)
    failed = Counter(r.error.reason for r in results if r.error is not None)
    if failed:
        print(f"{sum(failed.values())} unreadable: {_counts(failed)}")
    return 0


def _number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.2f}"
    return str(int(value)) if isinstance(value, float) else str(value)


def _run_prepare(args: argparse.Namespace) -> int:
    return run_prepare_command(args, on_ray=False)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="top-5 classes of videos with a registered model",
        description="Each video is seen through CLIPS x CROPS views, whose softmax is averaged. A video "
        "that cannot be read gets one error line on stderr (exit status 1); the others are still classified.",
    )
    p.add_argument("--model", required=True, help="registered model, e.g. models:/kinetics@champion")
    p.add_argument("videos", nargs="+", metavar="VIDEO_URL")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    p.add_argument("--clips", type=_positive_int, default=None, help="clips per video (default: the model's)")
    p.add_argument("--crops", type=int, choices=(1, 3), default=None, help="crops per clip (default: the model's)")
    p.add_argument("--top-k", type=_positive_int, default=5)
    p.add_argument(
        "--compile", action="store_true",
        help="compile the network (torch.compile, Inductor, freezing): the first video waits for the "
        "compilation (tens of seconds), the others run faster (1.3-1.4x for Oct-I3D-R50 at batch 1 on an Intel Xeon)",
    )
    add_storage_option_argument(p)
    p.set_defaults(run=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from octvideo.predict import compiled_for_inference, load_registered_model, predict_video

    loaded = load_registered_model(args.model, args.tracking_uri)
    if args.compile:
        loaded.model = compiled_for_inference(loaded.model)
    from octvideo.data import VideoDecodeError  # torch and the data path: once there is a model to run

    options = merge_storage_options(args.storage_options)
    failed = 0
    for url in args.videos:
        try:
            top = predict_video(
                loaded, url, num_clips=args.clips, num_crops=args.crops, top_k=args.top_k, storage_options=options
            )
        except VideoDecodeError as err:
            print(f"octvideo predict: error: {err}", file=sys.stderr)
            failed += 1
            continue
        print(url)
        for name, prob in top:
            print(f"  {prob:.4f}  {name}")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="octvideo", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_profile(sub)
    _add_data(sub)
    _add_predict(sub)
    return parser


def _storage_errors() -> tuple[type[BaseException], ...]:
    """Errors of a store that cannot be read (imported, with the data path, once one happens)."""
    from octvideo.data.storage import storage_errors

    return storage_errors()


def _user_error(args: argparse.Namespace, err: BaseException) -> int:
    """One line on stderr (``-v`` adds the stack), exit status 2."""
    logging.getLogger("octvideo").debug("%s failed", args.command, exc_info=True)
    command = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))
    print(f"octvideo {command}: error: {err}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our progress at INFO; libraries (botocore, alembic, ...) only when something is wrong, or with -v.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("octvideo").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:  # user errors (values, paths, storage): one line, no stack trace
        return args.run(args)
    except ValueError as err:
        return _user_error(args, err)
    except _storage_errors() as err:
        return _user_error(args, err)


if __name__ == "__main__":
    sys.exit(main())
