"""The cloud cluster files (cluster/aws, cluster/kuberay, cluster/docker) are valid and agree.

Real parsers only: PyYAML, Ray's own cluster-config preparation and schema check (what `ray up`
runs before it touches a cloud), the experiment schema (``load_config``), PEP 508 requirement
parsing for pyproject.toml and a small Dockerfile reader. Nothing here reaches a cloud, Kubernetes
or Docker; what they would say beyond these checks is listed in docs/clusters.md.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from octvideo.train.config import load_config

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
AWS_CONFIG = ROOT / "cluster" / "aws" / "octvideo.yaml"
RAYJOB = ROOT / "cluster" / "kuberay" / "rayjob.yaml"
RAYCLUSTER = ROOT / "cluster" / "kuberay" / "raycluster.yaml"
DOCKERFILE = ROOT / "cluster" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / "cluster" / "docker" / "Dockerfile.dockerignore"
CLUSTER_YAML = sorted((ROOT / "cluster" / "aws").glob("*.yaml")) + sorted((ROOT / "cluster" / "kuberay").glob("*.yaml"))

# vCPUs and GPUs of the GPU instance types the AWS config offers (AWS's published figures).
AWS_GPU_INSTANCES = {"g5.12xlarge": (48, 4), "g5.48xlarge": (192, 8), "g6.12xlarge": (48, 4),
                     "g6e.12xlarge": (48, 4), "p4d.24xlarge": (96, 8), "p4de.24xlarge": (96, 8),
                     "p5.48xlarge": (192, 8)}
# Credentials that must never be written into these files.
SECRET_PATTERNS = [re.compile(p) for p in (
    r"AKIA[0-9A-Z]{16}",                                   # AWS access key id
    r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{30,}",  # a secret key's value
    r"(?i)RAY_AUTH_TOKEN\s*[:=]\s*['\"]?[0-9a-f]{16,}",    # a literal Ray token
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
)]


def _yaml(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.name}: expected one YAML document, found {len(docs)}"
    assert isinstance(docs[0], dict)
    return docs[0]


@pytest.fixture(scope="module")
def experiment():
    """The recipe the cluster files are sized for (the RayJob's --config)."""
    return load_config(str(ROOT / "configs" / "oct_i3d_r50_k400.yaml"))


# --------------------------------------------------------------------------------- every file


def test_cluster_files_exist_and_parse():
    assert {p.name for p in CLUSTER_YAML} >= {"octvideo.yaml", "rayjob.yaml", "raycluster.yaml"}
    for path in CLUSTER_YAML:
        _yaml(path)


@pytest.mark.parametrize("path", CLUSTER_YAML + [DOCKERFILE], ids=lambda p: p.name)
def test_no_credentials_in_files(path):
    text = path.read_text()
    for pattern in SECRET_PATTERNS:
        assert not pattern.search(text), f"{path.name} holds a credential ({pattern.pattern})"


# ----------------------------------------------------------------------- Ray cluster launcher


def test_aws_config_passes_rays_schema_check():
    """What `ray up` does before any cloud call: the JSON schema, then defaults + validation."""
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _yaml(AWS_CONFIG)
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)                      # the file as written
    prepared = prepare_config(copy.deepcopy(raw))         # merged with Ray's AWS defaults
    validate_config(prepared)
    # Our settings win over Ray's AWS defaults (which pip-install at node start).
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert prepared[key] == [], key


def test_aws_config_nodes_docker_and_iam(experiment):
    config = _yaml(AWS_CONFIG)
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    assert config["docker"]["image"] and config["docker"]["container_name"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["node_config"]["InstanceType"] not in AWS_GPU_INSTANCES
    assert head["resources"].get("CPU") == 0, "the head must not take training work"
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert workers
    total_gpus = 0
    for name, node_type in workers.items():
        instance = node_type["node_config"]["InstanceType"]
        assert instance in AWS_GPU_INSTANCES, f"{name}: {instance} is not a known GPU instance type"
        vcpus, gpus = AWS_GPU_INSTANCES[instance]
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
        # One Ray Train worker per GPU, each with cpus_per_worker for decoding, fits on a node.
        assert gpus * experiment.scaling.cpus_per_worker <= vcpus, name
        total_gpus = max(total_gpus, gpus * node_type["max_workers"])
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]
    assert total_gpus >= experiment.scaling.num_workers, "cannot scale to the recipe's num_workers"
    # Storage and registry access through instance profiles (IAM roles), never keys.
    for name, node_type in types.items():
        arn = node_type["node_config"]["IamInstanceProfile"]["Arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", arn), name
    env_options = " ".join(config["docker"]["run_options"])
    assert "AWS_ACCESS_KEY_ID" not in env_options and "AWS_SECRET_ACCESS_KEY" not in env_options


def test_aws_config_token_auth():
    config = _yaml(AWS_CONFIG)
    assert "-e RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    # The token file goes from the user's machine to every node (the head's autoscaler passes
    # file_mounts on to workers); it is Ray's default token path inside the containers.
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    for key, start in (("head_start_ray_commands", "ray start --head"),
                       ("worker_start_ray_commands", "ray start --address=$RAY_HEAD_IP:6379")):
        commands = " ".join(config[key])
        assert start in commands, key
        assert "RAY_AUTH_MODE=token" in commands, key
        assert commands.index("RAY_AUTH_MODE=token") < commands.index(start), key
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in " ".join(config["head_start_ray_commands"])


# ------------------------------------------------------------------------------------ KubeRay


def _cluster_spec(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def _containers(group: dict) -> list[dict]:
    containers = group["template"]["spec"]["containers"]
    assert containers, "a group needs containers"
    return containers


@pytest.mark.parametrize("path,kind", [(RAYJOB, "RayJob"), (RAYCLUSTER, "RayCluster")], ids=["rayjob", "raycluster"])
def test_kuberay_manifest_structure(path, kind):
    manifest = _yaml(path)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == kind
    assert manifest["metadata"]["name"]
    spec = _cluster_spec(manifest)
    # Token auth through KubeRay's authOptions needs KubeRay >= 1.5.1 and Ray >= 2.52.
    assert spec["authOptions"] == {"mode": "token"}
    assert Version(spec["rayVersion"]) >= Version("2.52")
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["rayStartParams"].get("num-cpus") == "0"
    assert spec["workerGroupSpecs"], "no worker group"
    for group in [head, *spec["workerGroupSpecs"]]:
        for container in _containers(group):
            assert container["name"] and container["image"]
            assert {"secretRef": {"name": "octvideo-storage"}} in container["envFrom"]
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["MLFLOW_TRACKING_URI"]["value"].startswith(("http://", "https://"))
            for name, entry in env.items():   # credentials only from Secrets
                if re.search(r"KEY|SECRET|PASSWORD|TOKEN", name):
                    assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], name
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = _containers(group)
        gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
        assert gpus >= 1
        assert container["resources"]["requests"]["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"]
        tolerations = group["template"]["spec"]["tolerations"]
        assert any(t["key"] == "nvidia.com/gpu" and t["operator"] == "Exists" for t in tolerations)
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/dev/shm" in mounts, "DataLoader workers need more than the pod's 64 MiB /dev/shm"


def test_rayjob_entrypoint_and_lifecycle(experiment):
    job = _yaml(RAYJOB)["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    assert isinstance(job["ttlSecondsAfterFinished"], int) and job["ttlSecondsAfterFinished"] >= 0
    argv = shlex.split(job["entrypoint"])
    assert argv[0] == "python"
    script, args = argv[1], argv[2:]
    assert (ROOT / script).is_file(), f"entrypoint script {script} is not in the repository"
    assert script == "pipelines/kinetics.py"
    config = args[args.index("--config") + 1]
    assert (ROOT / config).is_file(), f"entrypoint config {config} is not in the repository"
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    loaded = load_config(str(ROOT / config), overrides)   # the experiment schema accepts it
    assert loaded.scaling.use_gpu
    # Relative paths resolve in the image's /app, which holds pipelines/ and configs/.
    assert yaml.safe_load(job["runtimeEnvYAML"]) == {"working_dir": "/app"}
    docker = _dockerfile()
    assert ("WORKDIR", "/app") in docker
    copied = {args.split()[0].rstrip("/") for op, args in docker if op == "COPY"}
    assert {"pipelines", "configs"} <= copied
    # The worker groups hold the job: one Ray Train worker per GPU, CPUs for its decoding.
    groups = job["rayClusterSpec"]["workerGroupSpecs"]
    total = 0
    for group in groups:
        (container,) = _containers(group)
        gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
        cpus = float(container["resources"]["limits"]["cpu"])
        assert gpus * loaded.scaling.cpus_per_worker <= cpus
        total += gpus * group["maxReplicas"]
    assert total >= loaded.scaling.num_workers * loaded.scaling.gpus_per_worker


def test_raycluster_matches_rayjob_groups():
    job = _cluster_spec(_yaml(RAYJOB))
    cluster = _cluster_spec(_yaml(RAYCLUSTER))
    assert cluster["enableInTreeAutoscaling"] is True
    image = _containers(job["headGroupSpec"])[0]["image"]
    for spec in (job, cluster):
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            assert all(c["image"] == image for c in _containers(group))
    pick = lambda g: (g["groupName"], _containers(g)[0]["resources"], g["template"]["spec"]["tolerations"])  # noqa: E731
    assert [pick(g) for g in job["workerGroupSpecs"]] == [pick(g) for g in cluster["workerGroupSpecs"]]


# ---------------------------------------------------------------------------------- Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            op, _, args = pending.strip().partition(" ")
            instructions.append((op.upper(), " ".join(args.split())))
        pending = ""
    return instructions


def _pip_installs(instructions) -> list[list[str]]:
    """The argument lists of every `pip install` in RUN lines, ARG defaults substituted."""
    args = {}
    for op, text in instructions:
        if op == "ARG" and "=" in text:
            name, value = text.split("=", 1)
            args[name] = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), value)
    installs = []
    for op, text in instructions:
        if op != "RUN":
            continue
        text = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        commands, words = [], []
        for token in lexer:
            if token in {"&&", "||", ";", "|", "&"}:
                commands.append(words)
                words = []
            else:
                words.append(token)
        for words in [*commands, words]:
            if words[:2] == ["pip", "install"] or words[1:4] == ["-m", "pip", "install"]:
                installs.append(words[words.index("install") + 1:])
    return installs


def _split_pip_args(words: list[str]) -> tuple[dict, list[str]]:
    with_value = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url"}
    options, packages, i = {}, [], 0
    while i < len(words):
        if words[i] in with_value:
            options.setdefault(words[i], []).append(words[i + 1])
            i += 2
        elif words[i].startswith("-"):
            options.setdefault(words[i], []).append(None)
            i += 1
        else:
            packages.append(words[i])
            i += 1
    return options, packages


def test_dockerfile_base_python_and_layout():
    instructions = _dockerfile()
    froms = [args for op, args in instructions if op == "FROM"]
    args = dict(a.split("=", 1) for op, a in instructions if op == "ARG" and "=" in a)
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], froms[-1])
    assert base.startswith("nvidia/cuda:") and "runtime" in base, base
    runs = " ".join(a for op, a in instructions if op == "RUN")
    assert "python3.11" in runs
    assert not re.search(r"apt-get install[^&;]*\bffmpeg\b", runs), "FFmpeg comes with PyAV's wheels"
    assert ("WORKDIR", "/app") in instructions
    copied = " ".join(a for op, a in instructions if op == "COPY")
    for needed in ("pyproject.toml", "README.md", "constraints.txt", "octvideo", "pipelines", "configs"):
        assert needed in copied, f"the image lacks {needed}"
    # The build context filter next to the Dockerfile lets those paths through.
    ignore = DOCKERIGNORE.read_text().split()
    for needed in ("pyproject.toml", "README.md", "constraints.txt", "octvideo/", "pipelines/", "configs/"):
        assert f"!{needed}" in ignore, needed


def test_dockerfile_installs_pyprojects_dependency_set():
    """The project itself is installed (so pyproject.toml's dependencies are), pinned by
    constraints.txt; anything named by hand is a dependency pinned there too, or a listed extra."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dependencies = {canonicalize_name(Requirement(d).name) for d in pyproject["project"]["dependencies"]}
    constrained = {canonicalize_name(Requirement(line.split("#")[0]).name)
                   for line in (ROOT / "constraints.txt").read_text().splitlines() if line.split("#")[0].strip()}
    # Extras that are not octvideo dependencies, each with its reason (see the Dockerfile).
    extras = {"pip", "boto3"}      # pip: upgraded in the venv; boto3: the AWS autoscaler on the head

    installs = [_split_pip_args(words) for words in _pip_installs(_dockerfile())]
    project = [(o, p) for o, p in installs if "." in p]
    assert len(project) == 1, "the Dockerfile must `pip install .` (the project) exactly once"
    assert project[0][0].get("-c") == ["constraints.txt"], "install the project with -c constraints.txt"
    assert not any("-r" in o or "--requirement" in o for o, _ in installs), "no hand-written requirement lists"

    named = set()
    for options, packages in installs:
        for spec in packages:
            if spec == ".":
                continue
            name = canonicalize_name(Requirement(spec).name)
            named.add(name)
            assert name in dependencies | extras, f"{spec} is neither a dependency nor a listed extra"
            if name in dependencies:   # installed ahead of the project: same pin as the project's
                assert options.get("-c") == ["constraints.txt"], spec
                assert name in constrained, f"{spec} is not pinned by constraints.txt"
                assert str(Requirement(spec).specifier) == "", f"{spec}: the pin comes from constraints.txt"
    # torch and torchvision come from the PyTorch CUDA wheel index, at the constrained versions.
    torch_installs = [o for o, p in installs if {"torch", "torchvision"} <= {canonicalize_name(x) for x in p}]
    assert torch_installs, "torch + torchvision (CUDA builds) are installed explicitly"
    (index,) = torch_installs[0]["--index-url"]
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index), index
    assert {canonicalize_name(n) for n in ("torch", "torchvision", "av", "ray", "deepspeed")} <= dependencies
