"""Print what a demo run left in MLflow: its run (with the UI link), the registered model's
``candidate`` version with its test top-1, and the ``champion``.

    python cluster/local/summary.py [--config configs/demo.yaml]

Names come from the experiment config (``tracking.*`` and ``checkpoint.name``); the server from
``MLFLOW_TRACKING_URI`` (``source .stack/env``). What is missing is reported, never raised.
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from octvideo.train.model_registry import CANDIDATE, CHAMPION, TOP1_TAG
from octvideo.train.tracking import RUN_NAME_TAG


def version_line(client: MlflowClient, model: str, alias: str) -> str:
    try:
        version = client.get_model_version_by_alias(model, alias)
    except MlflowException:
        return f"no registered version of {model!r} with alias {alias!r}"
    top1 = version.tags.get(TOP1_TAG)
    top1 = "not recorded" if top1 is None else f"{float(top1):.4f}"
    return f"{model!r} version {version.version} (run {version.run_id}), test top-1 {top1}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml", help="the experiment YAML the demo trained")
    args = parser.parse_args(argv)
    with open(args.config) as file:
        config = yaml.safe_load(file)
    experiment_name = config["tracking"]["experiment"]
    model = config["tracking"]["registered_model_name"]
    run_name = config["checkpoint"]["name"]
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        print("MLFLOW_TRACKING_URI is not set (source the stack's env file)", file=sys.stderr)
        return 2
    client = MlflowClient(uri)

    experiment = client.get_experiment_by_name(experiment_name)
    runs = [] if experiment is None else client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
        max_results=1, order_by=["attributes.start_time DESC"],
    )
    if runs:
        run = runs[0]
        print(f"MLflow run:  {run_name} in experiment {experiment_name!r}, {run.info.status}, run id {run.info.run_id}")
        print(f"             {uri.rstrip('/')}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}")
    else:
        print(f"MLflow run:  none named {run_name!r} in experiment {experiment_name!r} at {uri}")
    print(f"candidate:   {version_line(client, model, CANDIDATE)}")
    print(f"champion:    {version_line(client, model, CHAMPION)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
