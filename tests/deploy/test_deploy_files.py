"""The deploy files are what Ray, KubeRay and Docker will accept, with the safe defaults kept:
the cluster-launcher config against Ray's own schema, the KubeRay manifests against the fields
KubeRay requires, the Dockerfile against the install commands the README's scripts run."""
from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.aws.config import _configure_subnets_and_groups_from_network_interfaces
from ray.autoscaler._private.util import prepare_config, validate_config

from trainers.config import TrainConfig
from viewstream.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
AWS_CONFIG = DEPLOY / "aws" / "cluster.yaml"
KUBERAY = DEPLOY / "kuberay"


def load_aws() -> dict[str, Any]:
    return yaml.safe_load(AWS_CONFIG.read_text())


def ray_validate(config: dict[str, Any]) -> None:
    """What `ray up` does offline: fill defaults for the provider, then Ray's schema check."""
    validate_config(prepare_config(copy.deepcopy(config)))


# ------------------------------------------------------------------ Ray cluster launcher (AWS)
def test_aws_cluster_config_validates_against_rays_schema() -> None:
    ray_validate(load_aws())


@pytest.mark.parametrize("mutate", [
    lambda c: c.update(max_wokers=4),                                        # misspelt key
    lambda c: c["available_node_types"]["gpu_worker"].update(resources={"GPU": "eight"}),
    lambda c: c["docker"].update(imgae="x"),
    lambda c: c["provider"].update(security_group={"GroupName": "x", "Ingress": []}),
], ids=["unknown-key", "resource-not-int", "docker-typo", "security-group-typo"])
def test_rays_schema_check_is_strict_enough_to_catch_mistakes(mutate) -> None:
    config = load_aws()
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(config)


def test_aws_nodes_use_our_security_groups_and_roles_not_ray_defaults() -> None:
    # Without SecurityGroupIds Ray creates a group with SSH open to 0.0.0.0/0; without an
    # IamInstanceProfile it creates a role with broad EC2/S3 access.
    config = load_aws()
    assert config["provider"]["use_internal_ips"] is True
    assert "security_group" not in config["provider"]
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        if "NetworkInterfaces" in node:  # EFA nodes: groups per interface (what Ray checks and copies)
            node = _configure_subnets_and_groups_from_network_interfaces(node)
        assert node["SecurityGroupIds"] and all(g.startswith("sg-") for g in node["SecurityGroupIds"]), name
        assert node["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
        assert node["MetadataOptions"]["HttpTokens"] == "required", name


def test_aws_dashboard_on_loopback_and_token_auth_on_every_node() -> None:
    config = load_aws()
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    assert "-e RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    # The token comes from SSM with the node's role, into the default token path.
    assert any("~/.ray/auth_token" in cmd and "ssm" in cmd for cmd in config["setup_commands"])


# EFA network cards per instance type (AWS: p4d.24xlarge 4, p5.48xlarge 32).
EFA_CARDS = {"p4d.24xlarge": 4, "p5.48xlarge": 32}


def test_gpu_nodes_have_an_efa_interface_on_every_network_card() -> None:
    config = load_aws()
    seen = set()
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        cards = EFA_CARDS.get(node["InstanceType"])
        if cards is None:
            assert "NetworkInterfaces" not in node, name
            continue
        seen.add(node["InstanceType"])
        interfaces = node["NetworkInterfaces"]
        assert sorted(i["NetworkCardIndex"] for i in interfaces) == list(range(cards)), name
        assert all(i["InterfaceType"] == "efa" and i["SubnetId"] and i["Groups"] for i in interfaces), name
        assert [i["DeviceIndex"] for i in interfaces if i["NetworkCardIndex"] == 0] == [0], name
        assert node["Placement"]["GroupName"], name  # a cluster placement group
        assert "--device=/dev/infiniband" in node_type["docker"]["worker_run_options"], name
    assert seen == set(EFA_CARDS)
    assert "--ulimit memlock=-1:-1" in config["docker"]["run_options"]


def test_kuberay_gpu_pods_request_efa_devices() -> None:
    specs = [the("RayCluster", "raycluster.yaml")["spec"], the("RayJob", "rayjob.yaml")["spec"]["rayClusterSpec"]]
    for spec in specs:
        for group in spec["workerGroupSpecs"]:
            for container in group["template"]["spec"]["containers"]:
                res = container["resources"]
                if res["limits"].get("nvidia.com/gpu"):
                    assert res["limits"]["vpc.amazonaws.com/efa"] == res["requests"]["vpc.amazonaws.com/efa"] == "4"
                    assert "IPC_LOCK" in container["securityContext"]["capabilities"]["add"]
                else:
                    assert "vpc.amazonaws.com/efa" not in res["limits"]


def test_nccl_settings_live_in_one_file_that_every_node_sources() -> None:
    env = (DEPLOY / "nccl.env").read_text()
    keys = [line.split("=", 1)[0] for line in env.splitlines() if line and not line.startswith("#")]
    assert {"NCCL_DEBUG", "FI_PROVIDER", "FI_EFA_USE_DEVICE_RDMA", "NCCL_SOCKET_IFNAME", "LD_LIBRARY_PATH"} <= set(keys)
    assert "NCCL_DEBUG=INFO" in (DEPLOY / "README.md").read_text()  # how to confirm the plugin is used
    docker = (DEPLOY / "Dockerfile").read_text()
    assert "efa_installer.sh" in docker and "/opt/amazon/ofi-nccl" in docker
    assert ". /opt/viewstream/deploy/nccl.env" in docker and "/etc/profile.d/" in docker
    # No NCCL_/FI_ setting anywhere else in deploy/ (one place).
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.name not in {"nccl.env", "README.md"} and path.suffix in {".yaml", ".json", ".sh", ""}:
            assert not re.search(r"\b(NCCL_[A-Z_]+|FI_[A-Z_]+)=", path.read_text()), path
    # sourced by sh, every value well-formed
    import subprocess
    out = subprocess.run(["sh", "-c", f"set -a; . {DEPLOY / 'nccl.env'}; env"], capture_output=True, text=True, check=True)
    assert "FI_PROVIDER=efa" in out.stdout and "NCCL_DEBUG=WARN" in out.stdout


def test_no_secrets_or_world_open_addresses_in_deploy_files() -> None:
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.suffix in {".yaml", ".json", ".sh", ""}:
            text = path.read_text()
            assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|RAY_AUTH_TOKEN=\S", text, re.I), path
            assert "0.0.0.0" not in text, path


# ------------------------------------------------------------------ KubeRay
# Required by the CRDs (ray-project/kuberay ray-operator/apis/ray/v1/raycluster_types.go:
# fields without `omitempty`/+optional; rayStartParams was required before KubeRay 1.2).
HEAD_GROUP_REQUIRED = ("template", "rayStartParams")
WORKER_GROUP_REQUIRED = ("groupName", "minReplicas", "maxReplicas", "template", "rayStartParams")


def kuberay_docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]


def the(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in kuberay_docs(name) if d["kind"] == kind]
    assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
    return doc


def check_cluster_spec(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The RayClusterSpec fields KubeRay requires and the safe defaults; returns pod templates."""
    assert spec["rayVersion"] == ray.__version__  # the Ray the image installs (pinned by this venv)
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    for field in HEAD_GROUP_REQUIRED:
        assert field in head, field
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    templates = [head["template"]]
    for group in spec["workerGroupSpecs"]:
        for field in WORKER_GROUP_REQUIRED:
            assert field in group, (group.get("groupName"), field)
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
        templates.append(group["template"])
    for template in templates:
        containers = template["spec"]["containers"]
        assert containers and all(c["name"] and c["image"] for c in containers)
    for params in (head["rayStartParams"], *(g["rayStartParams"] for g in spec["workerGroupSpecs"])):
        assert all(isinstance(v, str) for v in params.values())  # map[string]string in the CRD
    return templates


def test_raycluster_has_the_fields_kuberay_requires() -> None:
    cluster = the("RayCluster", "raycluster.yaml")
    templates = check_cluster_spec(cluster["spec"])
    assert any(c["resources"]["limits"].get("nvidia.com/gpu") for t in templates for c in t["spec"]["containers"])


def test_rayjob_runs_viewstream_train_with_a_config_that_loads() -> None:
    job = the("RayJob", "rayjob.yaml")
    spec = job["spec"]
    check_cluster_spec(spec["rayClusterSpec"])
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] == "K8sJobMode"
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["viewstream", "train"]
    args = build_parser().parse_args(argv[1:])  # the real CLI accepts it
    config_path = Path(args.config.replace("/opt/viewstream/", f"{REPO}/"))  # WORKDIR in the image
    config = TrainConfig.load(config_path, args.overrides)
    assert config.scaling.use_gpu and config.run.storage.startswith("s3://")
    assert config.run.max_failures >= 1


def test_network_policy_covers_every_ray_pod_and_the_same_image_everywhere() -> None:
    (policy,) = [d for d in kuberay_docs("base.yaml") if d["kind"] == "NetworkPolicy"]
    (account,) = [d for d in kuberay_docs("base.yaml") if d["kind"] == "ServiceAccount"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert "Ingress" in policy["spec"]["policyTypes"]
    images = {load_aws()["docker"]["image"]}
    for spec in (the("RayCluster", "raycluster.yaml")["spec"], the("RayJob", "rayjob.yaml")["spec"]["rayClusterSpec"]):
        for template in [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]:
            assert selector.items() <= template["metadata"]["labels"].items()
            assert template["spec"]["serviceAccountName"] == account["metadata"]["name"]
            images.update(c["image"] for c in template["spec"]["containers"])
    assert len(images) == 1


# ------------------------------------------------------------------ Dockerfile
def dockerfile_runs() -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [line[4:].strip() for line in text.splitlines() if line.startswith("RUN ")]


def pins(text: str) -> set[str]:
    return set(re.findall(r'"((?:torch|torchvision)==[^"]+)"', text))


def test_dockerfile_installs_with_the_readme_scripts_commands() -> None:
    setup = (REPO / "scripts" / "setup_venv.sh").read_text()
    runs = dockerfile_runs()
    # The README's two commands both set up the venv with exactly this command; so does the image.
    for script in ("test.sh", "demo.sh"):
        assert "bash scripts/setup_venv.sh" in (REPO / "scripts" / script).read_text().splitlines()
    assert "bash scripts/setup_venv.sh" in runs
    # The pre-install differs only by the CUDA 12 index: same venv path, same pip, same pins.
    pre = next(r for r in runs if "torch==" in r)
    assert pins(pre) == pins(setup) and len(pins(setup)) == 2
    assert 'VENV=${VIEWSTREAM_VENV:-.venv}' in setup and "python3 -m venv .venv" in pre
    assert '"$VENV/bin/python" -m pip install -q --upgrade pip' in setup
    assert ".venv/bin/python -m pip install -q --upgrade pip" in pre
    # No other pip step could install the project differently.
    assert [r for r in runs if "pip install" in r] == [pre]
    text = (DEPLOY / "Dockerfile").read_text()
    assert "WORKDIR /opt/viewstream" in text and "ENV PATH=/opt/viewstream/.venv/bin:" in text


def test_dockerfile_is_cuda12_with_dali_for_cuda12() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:12\.\d+\.\d+-\S+", text)
    assert re.search(r"ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu12\d", text)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"nvidia-dali-cuda120"' in pyproject  # installed by setup_venv.sh's `pip install -e .`
