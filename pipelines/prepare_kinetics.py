"""Ray job: ``octvideo data prepare`` across a Ray cluster's CPUs.

    ray job submit --working-dir . -- python pipelines/prepare_kinetics.py SRC_URL DST_URL [...]
    python pipelines/prepare_kinetics.py SRC_URL DST_URL [...]   # starts a local Ray

Takes the arguments of ``octvideo data prepare`` (less ``--workers``: every CPU of the cluster
works, one video per task; see ``octvideo.data.prepare.run_prepare``). Finished videos are
skipped, so a rerun resumes; failed videos are listed, and the job fails on them only with
``--strict``. Exit status 2 for a usage error, before any cluster work.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from octvideo.data.prepare_command import add_prepare_arguments, run_prepare_command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="prepare_kinetics.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_prepare_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return run_prepare_command(args, on_ray=True)
    except (ValueError, OSError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
