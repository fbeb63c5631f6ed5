"""The cloud cluster files (cluster/aws, cluster/kuberay, cluster/docker) are valid and agree.

Real parsers only: PyYAML, Ray's own cluster-config preparation and schema check (what `ray up`
runs before it touches a cloud), Ray's AWS bootstrap against an in-process EC2 mock (moto), Ray's
AWS node provider building EC2 RunInstances requests that botocore checks against the EC2 API model
(stubbed: nothing is sent), Ray's `docker run` command builder, the experiment schema
(``load_config``), PEP 508 requirement parsing for pyproject.toml and a small Dockerfile reader.
Nothing here reaches a cloud, Kubernetes or Docker; what they would say beyond these checks is
listed in docs/clusters.md.
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
DOCS = ROOT / "docs" / "clusters.md"
CLUSTER_YAML = sorted((ROOT / "cluster" / "aws").glob("*.yaml")) + sorted((ROOT / "cluster" / "kuberay").glob("*.yaml"))

# vCPUs and GPUs of the GPU instance types the AWS config offers (AWS's published figures).
AWS_GPU_INSTANCES = {"g5.12xlarge": (48, 4), "g5.48xlarge": (192, 8), "g6.12xlarge": (48, 4),
                     "g6e.12xlarge": (48, 4), "p4d.24xlarge": (96, 8), "p4de.24xlarge": (96, 8),
                     "p5.48xlarge": (192, 8)}
# EFA interfaces of the EFA instance types the AWS config may offer: one per network card, the
# maximum AWS publishes (describe-instance-types: NetworkInfo.EfaInfo.MaximumEfaInterfaces).
AWS_EFA_INTERFACES = {"p4d.24xlarge": 4, "p4de.24xlarge": 4, "p5.48xlarge": 32, "p5e.48xlarge": 32}
# NCCL / libfabric variables the docs must explain, whether or not a file sets them.
NCCL_SETTINGS_DOCUMENTED = {"NCCL_DEBUG", "NCCL_DEBUG_SUBSYS", "NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE",
                            "FI_PROVIDER", "FI_EFA_USE_DEVICE_RDMA", "NCCL_PROTO", "NCCL_ALGO",
                            "NCCL_NET_PLUGIN", "NCCL_NET"}
# Placeholder values that stand for the user's own (account id, resource ids).
PLACEHOLDER = re.compile(r"\b123456789012\b|\b(?:ami|subnet|sg|vpc)-0[0-9a-f]{8,}\b")
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


@pytest.mark.parametrize("path", CLUSTER_YAML, ids=lambda p: p.name)
def test_placeholders_are_marked_change(path):
    """Every line with a stand-in account or resource id says CHANGE: on the line, or in the
    comment right above it (or above the key that opens it)."""
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if not PLACEHOLDER.search(line):
            continue
        above = number - 1
        if above >= 0 and lines[above].rstrip().endswith(":"):
            above -= 1
        comment = []
        while above >= 0 and lines[above].lstrip().startswith("#"):
            comment.append(lines[above])
            above -= 1
        assert "CHANGE" in line or any("CHANGE" in c for c in comment), f"{path.name}:{number + 1}"


def _docker_run_argv(config: dict, node_type: str) -> list[str]:
    """The `docker run` command line Ray starts a worker of ``node_type`` with: the cluster's
    docker settings updated by the node type's (as the autoscaler merges them), run_options +
    worker_run_options, through Ray's own command builder."""
    from ray.autoscaler._private.docker import docker_start_cmds

    docker = {**config["docker"], **config["available_node_types"][node_type].get("docker", {})}
    options = docker.get("run_options", []) + docker.get("worker_run_options", [])
    command = docker_start_cmds("ubuntu", docker["image"], {}, docker["container_name"], options,
                                config["cluster_name"], "/root", "docker")
    return shlex.split(command)


def _docker_options(argv: list[str]) -> tuple[list[str], list[str], dict[str, str]]:
    """(devices, ulimits, environment) of a `docker run` argv."""
    devices, ulimits, env = [], [], {}
    for i, word in enumerate(argv):
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if word.startswith("--device="):
            devices.append(word.split("=", 1)[1])
        elif word == "--device":
            devices.append(value)
        elif word == "--ulimit":
            ulimits.append(value)
        elif word == "-e":
            name, _, val = value.partition("=")
            env[name] = val
    return devices, ulimits, env


def test_aws_efa_node_types():
    """p4d and p5 nodes get every EFA the instance type has (one per network card), one subnet and
    security group, a cluster placement group, and a container with exactly the EFA devices."""
    config = _yaml(AWS_CONFIG)
    types = config["available_node_types"]
    efa_types = {name: t for name, t in types.items() if t["node_config"]["InstanceType"] in AWS_EFA_INTERFACES}
    assert {t["node_config"]["InstanceType"] for t in efa_types.values()} >= {"p4d.24xlarge", "p5.48xlarge"}
    for name, node_type in efa_types.items():
        node_config = node_type["node_config"]
        count = AWS_EFA_INTERFACES[node_config["InstanceType"]]
        interfaces = node_config["NetworkInterfaces"]
        assert len(interfaces) == count, name
        assert sorted(i["NetworkCardIndex"] for i in interfaces) == list(range(count)), f"{name}: one EFA per card"
        for interface in interfaces:
            assert interface["InterfaceType"] in {"efa", "efa-only"}, name
            # Primary interface: card 0, device 0; the others device 1 on their own card (AWS's layout).
            assert interface["DeviceIndex"] == (0 if interface["NetworkCardIndex"] == 0 else 1), name
        (primary,) = [i for i in interfaces if i["NetworkCardIndex"] == 0]
        assert primary["InterfaceType"] == "efa", f"{name}: the primary interface carries the node's IP traffic"
        assert len({i["SubnetId"] for i in interfaces}) == 1, f"{name}: one subnet (one zone) for all EFAs"
        assert len({tuple(i["Groups"]) for i in interfaces}) == 1, name
        # EC2 rejects a subnet or security groups next to NetworkInterfaces (and Ray refuses them).
        assert not {"SubnetId", "SubnetIds", "SecurityGroupIds"} & set(node_config), name
        assert node_config["Placement"]["GroupName"], f"{name}: cluster placement group"

        devices, ulimits, env = _docker_options(_docker_run_argv(config, name))
        assert sorted(devices) == sorted(f"/dev/infiniband/uverbs{k}" for k in range(count)), name
        assert "memlock=-1:-1" in ulimits, f"{name}: libfabric pins memory"
        assert env.get("FI_PROVIDER") == "efa" and env.get("FI_EFA_USE_DEVICE_RDMA") == "1", name
        argv = " ".join(_docker_run_argv(config, name))
        assert "--privileged" not in argv, f"{name}: the devices, not the whole host"
        assert "--shm-size" not in argv, f"{name}: Ray sizes /dev/shm from the node's memory"
    # Non-EFA node types start without EFA devices or GPUDirect settings.
    for name in set(types) - set(efa_types):
        devices, _, env = _docker_options(_docker_run_argv(config, name))
        assert not devices and "FI_EFA_USE_DEVICE_RDMA" not in env, name
    # One security group for every node: EFA needs all traffic to and from itself, Ray's processes
    # talk between head and workers on many ports.
    groups = set()
    for node_type in types.values():
        node_config = node_type["node_config"]
        groups |= set(node_config.get("SecurityGroupIds", []))
        groups |= {g for i in node_config.get("NetworkInterfaces", []) for g in i["Groups"]}
    assert len(groups) == 1, groups
    # Multi-interface nodes get no public IP: workers on private IPs, the head on its public one;
    # one zone, the placement groups' and the EFA subnet's.
    assert config["provider"]["use_internal_ips"] is True and config["provider"]["use_external_head_ip"] is True
    assert "," not in config["provider"]["availability_zone"]


def test_aws_node_configs_make_valid_run_instances_requests(monkeypatch):
    """Ray's AWS node provider turns each node type into an EC2 RunInstances request (after the
    step of `ray up` that copies subnets and security groups out of NetworkInterfaces); botocore
    checks every request against the EC2 API model before the stub answers. Nothing is sent."""
    from botocore.stub import Stubber
    from ray.autoscaler._private.aws.config import _configure_from_network_interfaces
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
    from ray.autoscaler._private.util import prepare_config
    from ray.autoscaler.tags import (
        NODE_KIND_HEAD,
        NODE_KIND_WORKER,
        TAG_RAY_LAUNCH_CONFIG,
        TAG_RAY_NODE_KIND,
        TAG_RAY_NODE_NAME,
        TAG_RAY_USER_NODE_TYPE,
    )

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    config = _configure_from_network_interfaces(prepare_config(_yaml(AWS_CONFIG)))
    provider = AWSNodeProvider(config["provider"], config["cluster_name"])
    client = provider.ec2_fail_fast.meta.client
    requests = {}
    for name, node_type in config["available_node_types"].items():
        kind = NODE_KIND_HEAD if name == config["head_node_type"] else NODE_KIND_WORKER
        tags = {TAG_RAY_NODE_KIND: kind, TAG_RAY_USER_NODE_TYPE: name, TAG_RAY_LAUNCH_CONFIG: "test",
                TAG_RAY_NODE_NAME: name}

        def record(params, name=name, **_):
            requests[name] = copy.deepcopy(params)

        client.meta.events.register("provide-client-params.ec2.RunInstances", record)
        try:
            with Stubber(client) as stub:
                stub.add_response("run_instances", {"Instances": [{"InstanceId": "i-0123456789abcdef0",
                                                                   "State": {"Code": 0, "Name": "pending"}}]})
                created = provider.create_node(copy.deepcopy(node_type["node_config"]), tags, 1)
                stub.assert_no_pending_responses()
        finally:
            client.meta.events.unregister("provide-client-params.ec2.RunInstances", record)
        assert list(created) == ["i-0123456789abcdef0"], name
    assert set(requests) == set(config["available_node_types"])
    for name, request in requests.items():
        assert request["InstanceType"] == config["available_node_types"][name]["node_config"]["InstanceType"]
        if "NetworkInterfaces" in request:
            assert not {"SubnetId", "SecurityGroupIds"} & set(request), f"{name}: EC2 rejects both at once"
            assert request["Placement"]["GroupName"], name
        else:
            assert request["SubnetId"] and request["SecurityGroupIds"], name


def test_aws_bootstrap_accepts_the_network(monkeypatch, tmp_path):
    """`ray up`'s AWS bootstrap (IAM, key pair, subnet and security-group checks) against an
    in-process EC2 mock (moto) holding the network docs/clusters.md asks for: a public subnet for
    the head, a private one for the GPU nodes, one security group. Ray accepts the private subnet
    (use_internal_ips) and creates no security group of its own."""
    import boto3
    from moto import mock_aws
    from ray.autoscaler._private.aws.config import bootstrap_aws
    from ray.autoscaler._private.util import prepare_config

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_EC2_METADATA_DISABLED": "true", "HOME": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)  # HOME: the key pair Ray writes to ~/.ssh
    raw = _yaml(AWS_CONFIG)
    provider = raw["provider"]
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=provider["region"])
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        zone = provider["availability_zone"]
        public = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24", AvailabilityZone=zone)["Subnet"]["SubnetId"]
        ec2.modify_subnet_attribute(SubnetId=public, MapPublicIpOnLaunch={"Value": True})
        private = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone=zone)["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName="octvideo", Description="octvideo", VpcId=vpc)["GroupId"]
        account = boto3.client("sts", region_name=provider["region"]).get_caller_identity()["Account"]
        iam = boto3.client("iam", region_name=provider["region"])
        for node_type in raw["available_node_types"].values():
            profile = node_type["node_config"]["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1]
            if profile not in {p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]}:
                iam.create_instance_profile(InstanceProfileName=profile)
        network = raw["metadata"]["network"]
        text = AWS_CONFIG.read_text()
        for placeholder, real in ((network["head_subnet"], public), (network["gpu_subnet"], private),
                                  (network["security_group"], group), ("123456789012", account)):
            text = text.replace(placeholder, real)
        config = bootstrap_aws(prepare_config(yaml.safe_load(text)))

        groups = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["SecurityGroups"]
        assert {g["GroupName"] for g in groups} == {"default", "octvideo"}, "Ray made a security group"
    for name, node_type in config["available_node_types"].items():
        node_config = node_type["node_config"]
        expected = public if name == config["head_node_type"] else private
        assert set(node_config["SubnetIds"]) == {expected}, name
        assert set(node_config["SecurityGroupIds"]) == {group}, name


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
    def pick(group):
        container = _containers(group)[0]
        return (group["groupName"], container["resources"], group["template"]["spec"]["tolerations"],
                container.get("env"), container.get("securityContext"), group["template"]["spec"].get("volumes"))

    assert [pick(g) for g in job["workerGroupSpecs"]] == [pick(g) for g in cluster["workerGroupSpecs"]]


@pytest.mark.parametrize("path", [RAYJOB, RAYCLUSTER], ids=["rayjob", "raycluster"])
def test_kuberay_gpu_workers_get_efa(path):
    """The GPU pods take their node's EFA devices (aws-efa-k8s-device-plugin), huge pages for
    libfabric, IPC_LOCK to pin memory, a memory-backed /dev/shm, and the NCCL/libfabric settings."""
    spec = _cluster_spec(_yaml(path))
    for group in spec["workerGroupSpecs"]:
        (container,) = _containers(group)
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        for resource in ("vpc.amazonaws.com/efa", "hugepages-2Mi", "nvidia.com/gpu", "memory"):
            assert requests.get(resource) == limits.get(resource) is not None, resource  # huge pages: must be equal
        efa, gpus = int(limits["vpc.amazonaws.com/efa"]), int(limits["nvidia.com/gpu"])
        # One pod per node: the sizes of one EFA instance type (8 GPUs, its EFA count, its vCPUs).
        instance = "p4d.24xlarge"
        assert efa == AWS_EFA_INTERFACES[instance] and gpus == AWS_GPU_INSTANCES[instance][1]
        assert float(limits["cpu"]) < AWS_GPU_INSTANCES[instance][0], "leave CPUs for the kubelet"
        assert "IPC_LOCK" in container["securityContext"]["capabilities"]["add"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env.get("FI_PROVIDER") == "efa" and env.get("FI_EFA_USE_DEVICE_RDMA") == "1"
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        (shm,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"
    # The head runs no NCCL: no EFA resources there.
    head = _containers(spec["headGroupSpec"])[0]
    assert "vpc.amazonaws.com/efa" not in head["resources"]["limits"]


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
        for command in [*commands, words]:
            if command[:2] == ["pip", "install"] or command[1:4] == ["-m", "pip", "install"]:
                installs.append(command[command.index("install") + 1:])
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


def _dockerfile_args(instructions) -> dict[str, str]:
    """ARG defaults, earlier ARGs substituted."""
    args = {}
    for op, text in instructions:
        if op == "ARG" and "=" in text:
            name, value = text.split("=", 1)
            args[name] = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), value)
    return args


def _dockerfile_env(instructions) -> dict[str, str]:
    """ENV settings (NAME=value form) of the last stage, in order, later ones winning."""
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    env = {}
    for op, text in instructions[last_from:]:
        if op == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(text))
    return env


def test_dockerfile_efa_userspace_and_ofi_plugin():
    """The image carries libfabric (AWS's EFA installer, user space only) and aws-ofi-nccl built
    for the CUDA of the torch wheels, at pinned versions, and NCCL finds the plugin."""
    instructions = _dockerfile()
    args = _dockerfile_args(instructions)
    for name in ("EFA_INSTALLER_VERSION", "AWS_OFI_NCCL_VERSION"):
        assert re.fullmatch(r"\d+\.\d+\.\d+", args[name]), f"{name} is pinned"
    runs = [text for op, text in instructions if op == "RUN"]
    installs = [text for text in runs if "efa_installer.sh" in text]
    assert len(installs) == 2, "the EFA installer in the build stage (to build against) and in the image"
    for text in installs:
        assert "aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz" in text
        flags = re.search(r"efa_installer\.sh ([^&;|]*)", text).group(1).split()
        assert {"-y", "--skip-kmod", "--skip-limit-conf", "--no-verify"} <= set(flags), flags
    built = " ".join(runs)
    assert "aws-ofi-nccl/releases/download/v${AWS_OFI_NCCL_VERSION}/aws-ofi-nccl-${AWS_OFI_NCCL_VERSION}.tar.gz" in built
    configure = re.search(r"\./configure ([^&;|]*)", built).group(1).split()
    assert {"--prefix=/opt/aws-ofi-nccl", "--with-libfabric=/opt/amazon/efa", "--enable-platform-aws"} <= set(configure)
    assert any(flag.startswith("--with-cuda=") for flag in configure)

    # The build stage has the CUDA of the runtime image, and that is the CUDA of the torch build.
    froms = [text.split() for op, text in instructions if op == "FROM"]
    sub = lambda text: re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)  # noqa: E731
    build_stage = [f for f in froms if len(f) == 3 and f[1].upper() == "AS"]
    assert len(build_stage) == 1 and len(froms) == 2
    build_base, stage_name = sub(build_stage[0][0]), build_stage[0][2]
    runtime_base = sub(froms[-1][0])
    assert build_base.replace("-devel-", "-runtime-") == runtime_base, (build_base, runtime_base)
    cuda = re.search(r":(\d+)\.(\d+)\.\d+-runtime", runtime_base)
    assert args["TORCH_CUDA"] == f"cu{cuda.group(1)}{cuda.group(2)}", "torch's CUDA is the image's"
    assert ("COPY", f"--from={stage_name} /opt/aws-ofi-nccl /opt/aws-ofi-nccl") in instructions

    # NCCL loads libnccl-net-ofi.so from LD_LIBRARY_PATH; the plugin finds libfabric there.
    env = _dockerfile_env(instructions)
    library_path = env["LD_LIBRARY_PATH"].split(":")
    assert {"/opt/aws-ofi-nccl/lib", "/opt/amazon/efa/lib"} <= set(library_path)
    assert library_path[-1] == "${LD_LIBRARY_PATH}", "the base image's CUDA paths stay"
    assert env["NCCL_NET_PLUGIN"] == "ofi" and env["FI_PROVIDER"] == "efa"
    # Only settings that are right on every host belong in the image.
    assert not {"FI_EFA_USE_DEVICE_RDMA", "NCCL_NET", "NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE", "NCCL_PROTO",
                "NCCL_ALGO", "NCCL_DEBUG"} & set(env)


# ---------------------------------------------------------------------------------------- docs


def _files_nccl_settings() -> set[str]:
    """NCCL_* / FI_* variables the cluster files set: Dockerfile ENV, docker -e on the AWS node
    types, container env in the KubeRay manifests."""
    names = {name for name in _dockerfile_env(_dockerfile()) if name.startswith(("NCCL_", "FI_"))}
    config = _yaml(AWS_CONFIG)
    for node_type in config["available_node_types"]:
        names |= {n for n in _docker_options(_docker_run_argv(config, node_type))[2] if n.startswith(("NCCL_", "FI_"))}
    for path in (RAYJOB, RAYCLUSTER):
        spec = _cluster_spec(_yaml(path))
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            for container in _containers(group):
                names |= {e["name"] for e in container.get("env", []) if e["name"].startswith(("NCCL_", "FI_"))}
    return names


def test_docs_explain_every_nccl_setting():
    text = DOCS.read_text()
    start = re.search(r"^## \d+\. NCCL and EFA$", text, re.M)
    assert start, "docs/clusters.md has a section 'NCCL and EFA'"
    end = re.search(r"^## ", text[start.end():], re.M)
    section = text[start.start():start.end() + (end.start() if end else len(text))]
    set_by_files = _files_nccl_settings()
    assert {"NCCL_NET_PLUGIN", "FI_PROVIDER", "FI_EFA_USE_DEVICE_RDMA"} <= set_by_files
    for name in set_by_files | NCCL_SETTINGS_DOCUMENTED:
        assert f"`{name}" in section, f"the NCCL and EFA section does not explain {name}"
    # How to tell EFA from the TCP fallback in NCCL's log, and the DeepSpeed side of multi-node.
    for needle in ("NET/OFI Selected Provider is efa", "Using network Libfabric", "NET/Socket",
                   "### DeepSpeed settings for multi-node", "communication_dtype", "overlap_comm",
                   "contiguous_gradients", "reduce_bucket_size", "create-placement-group", "--strategy cluster"):
        assert needle in text, needle

