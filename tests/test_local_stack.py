"""The local stack (cluster/local/up.sh, down.sh) with real processes: S3, MLflow and a Ray head
with token auth come up, a Ray job sees the stack through its runtime env, and down.sh stops it all.

Runs in a stack folder of its own on free ports, so a developer's stack is never touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import urlopen

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PORT_VARIABLES = ("S3", "MLFLOW", "RAY", "RAY_DASHBOARD", "RAY_CLIENT", "RAY_AGENT")
# A job that prints what it sees of the stack: its env, its Python, and an object put in S3 by the
# test, read back through pyarrow as Ray Train's storage does (env only, no options).
JOB = """
import os, sys, octvideo, pyarrow.fs
fs, path = pyarrow.fs.FileSystem.from_uri("s3://octvideo-demo/probe.txt")
print("S3", fs.open_input_stream(path).read().decode())
print("ENV", os.environ["AWS_ENDPOINT_URL"], os.environ["MLFLOW_TRACKING_URI"])
print("PYTHON", sys.executable)
"""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def read_env_file(path: Path) -> dict[str, str]:
    return dict(line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines())


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(240)
def test_local_stack_up_job_down():
    # A short folder: Ray's unix sockets live under it, and their paths are limited to 107 bytes.
    stack = Path(tempfile.mkdtemp(prefix="octvideo-stack-"))
    ports = dict(zip(PORT_VARIABLES, free_ports(len(PORT_VARIABLES))))
    # Nothing of a stack the developer may have sourced: clients get only this stack's env file.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_"))}
    script_env = {**base, "OCTVIDEO_STACK_DIR": str(stack), "OCTVIDEO_BIN": str(BIN)}
    script_env.update({f"OCTVIDEO_{name}_PORT": str(port) for name, port in ports.items()})

    def script(name: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(ROOT / "cluster/local" / name)], env=script_env, capture_output=True,
                              text=True, timeout=120)

    try:
        up = script("up.sh")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "already up" in script("up.sh").stdout
        pids = {name: int((stack / f"{name}.pid").read_text()) for name in ("s3", "mlflow", "ray")}
        env = read_env_file(stack / "env")
        assert env["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{ports['S3']}"

        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        s3.put_object(Bucket="octvideo-demo", Key="probe.txt", Body=b"from the test")
        with urlopen(f"{env['MLFLOW_TRACKING_URI']}/health", timeout=5) as reply:
            assert reply.status == 200
        with pytest.raises(HTTPError) as refused:  # token auth is on
            urlopen(f"{env['RAY_API_SERVER_ADDRESS']}/api/jobs/", timeout=5)
        assert refused.value.code == 401

        job = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--working-dir", str(ROOT),
             "--runtime-env", str(stack / "runtime_env.yaml"), "--", "python", "-c", JOB],
            env={**base, **env}, capture_output=True, text=True, timeout=120,
        )
        assert job.returncode == 0, job.stdout + job.stderr
        assert "S3 from the test" in job.stdout
        assert f"ENV {env['AWS_ENDPOINT_URL']} {env['MLFLOW_TRACKING_URI']}" in job.stdout
        assert f"PYTHON {BIN / 'python'}" in job.stdout

        down = script("down.sh")
        assert down.returncode == 0, down.stdout + down.stderr
        assert not [name for name, pid in pids.items() if process_group_alive(pid)]
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", ports["RAY"]), timeout=1)
        assert script("down.sh").stdout == ""  # twice is fine
    finally:
        script("down.sh")
        shutil.rmtree(stack, ignore_errors=True)
