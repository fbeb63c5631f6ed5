"""Ray job: train an experiment with Ray Train + DeepSpeed, tracked in MLflow (see ``octvideo.train.job``).

    ray job submit --working-dir . -- python pipelines/kinetics.py --config configs/demo.yaml [--set key=value ...]
    python pipelines/kinetics.py --config configs/demo.yaml --set optim.epochs=2   # starts a local Ray

``--set`` overrides a dotted key of the YAML (repeatable; values parsed as YAML). A bad
configuration, a missing manifest, unreadable training data or an unreachable tracking server
fail before any cluster work, with one line on stderr and exit status 2 (the configuration and
the manifests' URLs are checked first, within a second). A run that fails in training (its
workers' failures past ``checkpoint.max_failures``) ends with one line naming the first worker's
error, and exit status 1. Running the same ``checkpoint.name`` again resumes the run (and its
MLflow run).
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from octvideo.train.config import ConfigError, check_inputs, load_config


def _one_line(message: str) -> str:
    """A headline and indented problems as one line."""
    headline, *problems = (line.strip() for line in message.splitlines() if line.strip())
    return " ".join([headline, "; ".join(problems)]).strip()


def _fail(prog: str, error: Exception, verbose: bool = False) -> int:
    """Print ``error`` as one line on stderr (``verbose``: after its traceback and causes); exit status 2."""
    if verbose:
        traceback.print_exception(error, file=sys.stderr)
    print(f"{prog}: error: {_one_line(str(error))}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kinetics.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="experiment YAML (path or URL)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted config key, e.g. --set optim.lr=0.01 (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="on an error, also print its traceback and the errors that caused it")
    args = parser.parse_args(argv)
    # Our progress at INFO; libraries (botocore, alembic, ...) only when something is wrong.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("octvideo", parser.prog):
        logging.getLogger(name).setLevel(logging.INFO)
    try:  # before importing torch, DeepSpeed and Ray: a typo or a wrong URL fails in a second
        config = load_config(args.config, args.overrides)
        check_inputs(config)
    except ConfigError as error:
        return _fail(parser.prog, error, args.verbose)

    import ray
    import ray.train

    from octvideo.data.storage import StorageUnavailable
    from octvideo.train.job import prepare_job, run_job, training_failure
    from octvideo.train.report_lines import run_line
    from octvideo.train.tracking import TrackingUnavailable

    try:
        job = prepare_job(config)
    except (ConfigError, TrackingUnavailable, StorageUnavailable) as error:
        return _fail(parser.prog, error, args.verbose)
    ray.init()  # joins the cluster of RAY_ADDRESS (as under `ray job submit`), else starts a local one
    try:
        outcome = run_job(job)
    except ConfigError as error:  # what the cluster cannot give (data.decoder_resources)
        return _fail(parser.prog, error, args.verbose)
    except ray.train.TrainingFailedError as error:  # the workers' tracebacks are in the log above
        print(f"{parser.prog}: error: {_one_line(training_failure(error))}", file=sys.stderr)
        return 1
    logger = logging.getLogger(parser.prog)
    logger.info("run %s done: %s", config.checkpoint.name, run_line(outcome.result.metrics))
    logger.info("fp32 weights: %s", outcome.weights_path)
    logger.info("MLflow run: %s", outcome.tracking_run_id)
    if outcome.registration is not None:
        r = outcome.registration
        logger.info("registered %s version %s (test top-1 %.4f), aliases %s", r.name, r.version, r.test_top1, r.aliases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
