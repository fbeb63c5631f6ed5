"""The ``octvideo`` command: ``octvideo profile ...`` (more subcommands join as they land)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence


def _int_tuple(text: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,2, got {text!r}") from None


def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="parameters, MACs and activation memory of a model, against alpha = 0")
    p.add_argument("--model", required=True, help="registered model name (see --list)")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--frames", type=int, default=8, help="input frames (slow-pathway frames for SlowFast)")
    p.add_argument("--size", type=int, default=224, help="input height and width")
    p.add_argument("--octave-pool", type=_int_tuple, default=None, help="e.g. 1,2,2 (spatial) or 2,2,2")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--width", type=int, default=None, help="base channel width (default: the model's)")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="octvideo", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_profile(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except ValueError as err:  # user errors: one clear line, no stack trace
        print(f"octvideo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
