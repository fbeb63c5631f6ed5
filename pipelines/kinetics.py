"""Ray job: train an experiment with Ray Train + DeepSpeed, tracked in MLflow (see ``octvideo.train.job``).

    ray job submit --working-dir . -- python pipelines/kinetics.py --config configs/demo.yaml [--set key=value ...]
    python pipelines/kinetics.py --config configs/demo.yaml --set optim.epochs=2   # starts a local Ray

``--set`` overrides a dotted key of the YAML (repeatable; values parsed as YAML). A bad
configuration, unreadable training data or an unreachable tracking server fail before any
cluster work, with one line on stderr and exit status 2. Running the same ``checkpoint.name``
again resumes the run (and its MLflow run).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import ray

from octvideo.train.config import ConfigError, load_config
from octvideo.train.job import prepare_job, run_job
from octvideo.train.tracking import TrackingUnavailable


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kinetics.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="experiment YAML (path or URL)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted config key, e.g. --set optim.lr=0.01 (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        job = prepare_job(load_config(args.config, args.overrides))
    except (ConfigError, TrackingUnavailable) as error:
        headline, *problems = (line.strip() for line in str(error).splitlines() if line.strip())
        print(f"{parser.prog}: error: {' '.join([headline, '; '.join(problems)]).strip()}", file=sys.stderr)
        return 2
    ray.init()  # joins the cluster of RAY_ADDRESS (as under `ray job submit`), else starts a local one
    outcome = run_job(job)
    log = logging.getLogger(parser.prog)
    log.info("final metrics %s", outcome.result.metrics)
    log.info("fp32 weights: %s", outcome.weights_path)
    log.info("MLflow run: %s", outcome.tracking_run_id)
    if outcome.registration is not None:
        r = outcome.registration
        log.info("registered %s version %s (test top-1 %.4f), aliases %s", r.name, r.version, r.test_top1, r.aliases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
