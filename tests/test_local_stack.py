"""The local stack (cluster/local/up.sh, down.sh) with real processes: S3, MLflow and a Ray head
with token auth come up, a Ray job sees the stack through its runtime env, and down.sh stops it all.

Runs in a stack folder of its own on free ports, so a developer's stack is never touched.
"""

from __future__ import annotations

import os
import socket
from urllib.error import HTTPError
from urllib.request import urlopen

import boto3
import pytest

from tests.stack import BIN, LocalStack, is_loopback

# A job that prints what it sees of the stack: its env, its Python, an object put in S3 by the
# test, read back through pyarrow as Ray Train's storage does (env only, no options), and its
# Ray node's address.
JOB = """
import os, sys, octvideo, pyarrow.fs
fs, path = pyarrow.fs.FileSystem.from_uri("s3://octvideo-demo/probe.txt")
print("S3", fs.open_input_stream(path).read().decode())
print("ENV", os.environ["AWS_ENDPOINT_URL"], os.environ["MLFLOW_TRACKING_URI"])
print("PYTHON", sys.executable)
import ray
ray.init()
print("NODE", ray.util.get_node_ip_address())
"""


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(240)
def test_local_stack_up_job_down():
    stack = LocalStack()
    try:
        stack.up()
        assert "already up" in stack.script("up.sh").stdout
        pids = {name: int((stack.folder / f"{name}.pid").read_text()) for name in ("s3", "mlflow", "ray")}
        env = stack.env
        assert env["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{stack.ports['S3']}"

        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        s3.put_object(Bucket="octvideo-demo", Key="probe.txt", Body=b"from the test")
        with urlopen(f"{env['MLFLOW_TRACKING_URI']}/health", timeout=5) as reply:
            assert reply.status == 200
        with pytest.raises(HTTPError) as refused:  # token auth is on
            urlopen(f"{env['RAY_API_SERVER_ADDRESS']}/api/jobs/", timeout=5)
        assert refused.value.code == 401

        job = stack.submit("python", "-c", JOB, timeout=120)
        assert job.returncode == 0, job.stdout + job.stderr
        # Everything listens on the loopback only: S3, MLflow, and every port of Ray (node address
        # 127.0.0.1), its job driver's included.
        listeners = stack.listeners()
        assert {stack.ports[name] for name in ("S3", "MLFLOW", "RAY", "RAY_DASHBOARD")} <= {port for *_, port in listeners}
        assert [(command, address, port) for command, address, port in listeners if not is_loopback(address)] == []
        assert "NODE 127.0.0.1" in job.stdout
        assert "S3 from the test" in job.stdout
        assert f"ENV {env['AWS_ENDPOINT_URL']} {env['MLFLOW_TRACKING_URI']}" in job.stdout
        assert f"PYTHON {BIN / 'python'}" in job.stdout

        down = stack.script("down.sh")
        assert down.returncode == 0, down.stdout + down.stderr
        assert not [name for name, pid in pids.items() if process_group_alive(pid)]
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", stack.ports["RAY"]), timeout=1)
        assert stack.script("down.sh").stdout == ""  # twice is fine
    finally:
        stack.remove()
