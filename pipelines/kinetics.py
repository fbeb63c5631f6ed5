"""Ray job: train an experiment with Ray Train + DeepSpeed (see ``octvideo.train.job``).

    ray job submit --working-dir . -- python pipelines/kinetics.py --config configs/demo.yaml [--set key=value ...]
    python pipelines/kinetics.py --config configs/demo.yaml --set optim.epochs=2   # starts a local Ray

``--set`` overrides a dotted key of the YAML (repeatable; values parsed as YAML). A bad
configuration fails before any cluster work, with exit status 2. Running the same
``checkpoint.name`` again resumes the run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import ray

from octvideo.train.config import ConfigError, load_config
from octvideo.train.job import check_supported, run_job


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kinetics.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="experiment YAML (path or URL)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted config key, e.g. --set optim.lr=0.01 (repeatable)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        check_supported(config)
    except ConfigError as error:
        headline, *problems = (line.strip() for line in str(error).splitlines() if line.strip())
        print(f"{parser.prog}: error: {' '.join([headline, '; '.join(problems)]).strip()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ray.init()  # joins the cluster of RAY_ADDRESS (as under `ray job submit`), else starts a local one
    outcome = run_job(config)
    logging.getLogger(parser.prog).info("final metrics %s; fp32 weights at %s", outcome.result.metrics, outcome.weights_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
