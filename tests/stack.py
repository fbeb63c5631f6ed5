"""The local stack of ``cluster/local`` (S3, MLflow, a Ray head with token auth) for tests: in a
folder of its own on free ports, so a developer's stack is never touched."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PORT_VARIABLES = ("S3", "MLFLOW", "RAY", "RAY_DASHBOARD", "RAY_CLIENT", "RAY_AGENT")


def _listening_ports() -> range:
    """Ports for the servers tests start: outside the kernel's ephemeral range, where every
    outgoing connection takes its local port (one may take a port chosen there before its server
    binds it: seen as Ray's client server failing to bind), and above Ray's worker ports
    (10002-19999 by default)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(20000, low) if low > 21000 else range(high + 1, 65536)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports nothing is bound to on 127.0.0.1, from :func:`_listening_ports`."""
    candidates = _listening_ports()
    chosen: list[int] = []
    for port in random.sample(candidates, len(candidates)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise RuntimeError(f"fewer than {count} free ports in {candidates}")


def read_env_file(path: Path) -> dict[str, str]:
    return dict(line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines())


@dataclass
class LocalStack:
    """A stack folder and its ports; :meth:`script` runs ``up.sh`` / ``down.sh`` on it."""

    # A short folder: Ray's unix sockets live under it, and their paths are limited to 107 bytes.
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="octvideo-stack-")))
    ports: dict[str, int] = field(default_factory=lambda: dict(zip(PORT_VARIABLES, free_ports(len(PORT_VARIABLES)))))
    credentials: dict[str, str] = field(default_factory=dict)  # up.sh's OCTVIDEO_S3_* / OCTVIDEO_MLFLOW_TRACKING_TOKEN
    multi_node: bool = False  # up.sh's OCTVIDEO_MULTI_NODE: a Ray head that add-node.sh can join

    @property
    def base_env(self) -> dict[str, str]:
        """This process's environment without any stack the developer may have sourced."""
        return {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_"))}

    @property
    def env(self) -> dict[str, str]:
        """What a client of the stack needs (its env file)."""
        return read_env_file(self.folder / "env")

    @property
    def client_env(self) -> dict[str, str]:
        return {**self.base_env, **self.env}

    def script(self, name: str, *args: str) -> subprocess.CompletedProcess:
        env = {**self.base_env, **self.credentials, "OCTVIDEO_STACK_DIR": str(self.folder), "OCTVIDEO_BIN": str(BIN),
               "OCTVIDEO_MULTI_NODE": str(int(self.multi_node))}
        env.update({f"OCTVIDEO_{name}_PORT": str(port) for name, port in self.ports.items()})
        return subprocess.run([str(ROOT / "cluster/local" / name), *args], env=env, capture_output=True, text=True, timeout=120)

    def up(self) -> None:
        started = self.script("up.sh")
        assert started.returncode == 0, started.stdout + started.stderr

    def add_node(self, cpus: int, resources: dict[str, float] | None = None) -> tuple[str, str]:
        """Join another Ray node with ``cpus`` CPUs and custom ``resources`` (``add-node.sh``); its
        name and Ray node id."""
        added = self.script("add-node.sh", str(cpus), json.dumps(resources or {}))
        assert added.returncode == 0, added.stdout + added.stderr
        name, node_id = added.stdout.split()
        return name, node_id

    def kill_node(self, name: str) -> None:
        """SIGKILL every process of node ``name`` (its raylet, agents and workers) at once, as
        when a machine is preempted."""
        leader = int((self.folder / f"{name}.pid").read_text())
        os.killpg(leader, signal.SIGKILL)

    def listeners(self) -> set[tuple[str, str, int]]:
        """(command line, address, port) of every listening TCP socket of the stack's processes
        (the sessions of its services and nodes, children included)."""
        sessions = {int(path.read_text()) for path in self.folder.glob("*.pid")}
        stack = {p.pid: " ".join(p.info["cmdline"] or [])[:200] for p in psutil.process_iter(["cmdline"])
                 if _session(p.pid) in sessions}
        return {
            (stack[c.pid], c.laddr.ip, c.laddr.port)
            for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.pid in stack
        }

    def remove(self) -> None:
        """Stop the stack (if up) and delete its folder."""
        self.script("down.sh")
        shutil.rmtree(self.folder, ignore_errors=True)

    def submit(self, *command: str, runtime_env: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        """``ray job submit`` of ``command`` with the repository as working dir and the stack's
        runtime env (or ``runtime_env``); waits for the job and returns its output."""
        return subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--working-dir", str(ROOT),
             "--runtime-env", str(runtime_env or self.folder / "runtime_env.yaml"), "--", *command],
            env=self.client_env, capture_output=True, text=True, timeout=timeout,
        )


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address.removeprefix("::ffff:")).is_loopback


def is_ray_process(command: str) -> bool:
    """Whether a command line is one of Ray's processes (GCS, raylet, agents, workers, Ray Client)."""
    return command.startswith("ray::") or "/site-packages/ray/" in command or " -m ray." in command
