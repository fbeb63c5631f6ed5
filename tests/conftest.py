"""Shared fixtures: a real S3 API server (moto in server mode) on 127.0.0.1; and the ``slow``
marker of the tests that ``make test-fast`` leaves out."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import pytest

from tests.stack import free_ports

# Tests that start services (the S3 server, MLflow servers, Ray, the local stack) or train or
# compile for a minute: marked ``slow``, so that ``make test-fast`` (``-m "not slow"``) runs the
# rest in a few minutes. ``make test`` and CI run everything.
SERVICE_FIXTURES = {"s3_server"}
SLOW_PATHS = (
    "tests/faults/", "tests/test_local_stack.py", "tests/test_benchmarks.py", "tests/models/test_compile.py",
    "tests/train/test_learning.py", "tests/train/test_transfer.py", "tests/train/test_finetune.py",
    "tests/train/test_harness.py", "tests/train/test_multinode.py", "tests/train/test_ray_job.py",
    "tests/train/test_loop.py", "tests/train/test_tracking.py", "tests/data/test_ray_ingest.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.relative_to(config.rootpath).as_posix()
        if SERVICE_FIXTURES & set(item.fixturenames) or path.startswith(SLOW_PATHS):
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    return free_ports(1)[0]


@dataclass
class S3Server:
    """A moto S3 server process; `storage_options` is what fsspec / s3fs needs to reach it."""

    endpoint_url: str
    process: subprocess.Popen

    @property
    def storage_options(self) -> dict:
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
        }

    def new_bucket(self) -> str:
        """Create an empty bucket and return its name."""
        import boto3

        name = f"test-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket=name)
        return name


def start_s3_server(log_path: Path) -> S3Server:
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urlopen(url, timeout=1).close()
            return S3Server(url, process)
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"moto_server did not start on {url}; see {log_path}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    """A real S3 API on loopback for the whole test session."""
    server = start_s3_server(tmp_path_factory.mktemp("moto") / "moto.log")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    return s3_server.new_bucket()
