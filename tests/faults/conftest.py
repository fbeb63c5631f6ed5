"""The fault suite's stack: the local stack with a tiny synthetic Kinetics, its S3 server and
MLflow server each behind a :class:`FaultyProxy`, a runtime env that sends jobs through the
proxies, and credentials of its own, which the secrets scan looks for."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from mlflow.tracking import MlflowClient

from octvideo.train.tracking import RUN_NAME_TAG
from tests import jobs
from tests.faults.proxy import FaultyProxy
from tests.jobs import EXPERIMENT, stack_with_tiny_data
from tests.stack import LocalStack


@dataclass
class FaultStack:
    stack: LocalStack
    s3: FaultyProxy
    mlflow: FaultyProxy
    runtime_env: Path  # jobs reach S3 and MLflow through the proxies
    credentials: dict[str, str]  # in the Ray processes' environment; no log, param, tag or artifact may hold them


def _proxy(url: str) -> FaultyProxy:
    return FaultyProxy(urlparse(url).port)


@pytest.fixture(scope="package")
def faults() -> Iterator[FaultStack]:
    credentials = {  # moto and an MLflow server without auth accept any
        "OCTVIDEO_S3_ACCESS_KEY_ID": f"AKIA{secrets.token_hex(8).upper()}",
        "OCTVIDEO_S3_SECRET_ACCESS_KEY": f"fault-suite-secret-{secrets.token_hex(12)}",
        "OCTVIDEO_MLFLOW_TRACKING_TOKEN": f"fault-suite-token-{secrets.token_hex(12)}",
    }
    with stack_with_tiny_data(credentials) as stack:
        s3, mlflow = _proxy(stack.env["AWS_ENDPOINT_URL"]), _proxy(stack.env["MLFLOW_TRACKING_URI"])
        runtime_env = stack.folder / "faults_runtime_env.yaml"
        runtime_env.write_text(yaml.safe_dump({"env_vars": {
            "AWS_ENDPOINT_URL": s3.url, "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_TRACKING_URI": mlflow.url,
        }}))
        try:
            yield FaultStack(stack, s3, mlflow, runtime_env, credentials)
        finally:
            s3.close()
            mlflow.close()


def submit_during(
    faults: FaultStack, name: str, config: dict, fault: Callable[[], None], *, succeed: bool = True
) -> subprocess.CompletedProcess:
    """:func:`tests.jobs.submit_during` through the proxies."""
    return jobs.submit_during(faults.stack, name, config, fault, runtime_env=faults.runtime_env, succeed=succeed)


def logged_step(faults: FaultStack, name: str) -> int:
    """The highest ``global_step`` in the MLflow run ``name`` (0 before it exists)."""
    client = MlflowClient(faults.stack.env["MLFLOW_TRACKING_URI"])
    experiment_ = client.get_experiment_by_name(EXPERIMENT)
    if experiment_ is None:
        return 0
    runs = client.search_runs([experiment_.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{name}'")
    return int(runs[0].data.metrics.get("global_step", 0)) if runs else 0
