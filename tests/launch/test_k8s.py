"""The rendered PyTorchJob: structure, schema-valid, shm sized for the loaders, no literal secrets."""
from __future__ import annotations

import copy

import pytest
import yaml

from launch.k8s import render_pytorchjob, to_yaml
from launch.k8s_schema import validate_pytorchjob
from tests.conftest import cli
from tests.launch.conftest import spec_for
from trainer.errors import UserError

IMAGE = "launcher.image=registry.example.com/trainer:1.0"


@pytest.fixture(scope="module")
def job() -> dict:
    spec = spec_for("k8s", "experiment=gpt_1b", IMAGE, "launcher.min_nodes=1", "launcher.runs_volume_claim=runs",
                    "+launcher.env.NCCL_SOCKET_IFNAME=eth0")
    return render_pytorchjob(spec, job_name="gpt_1b run")


def container(job: dict) -> dict:
    return job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]


def env_of(job: dict) -> dict:
    return {e["name"]: e for e in container(job)["env"]}


def test_schema_valid(job):
    assert validate_pytorchjob(job) == []


def test_layout_and_elastic_policy(job):
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    assert job["metadata"]["name"] == "gpt-1b-run"  # made a valid object name
    worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 2 and worker["restartPolicy"] == "OnFailure"
    assert job["spec"]["nprocPerNode"] == "8"
    assert job["spec"]["elasticPolicy"] == {"rdzvBackend": "c10d", "minReplicas": 1, "maxReplicas": 2, "maxRestarts": 3}
    c = container(job)
    assert c["name"] == "pytorch" and c["image"] == "registry.example.com/trainer:1.0"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    # torchrun takes its layout from the operator; the overrides pass through; the run id is the job's name
    assert c["args"][:3] == ["torchrun", "-m", "trainer.train"]
    assert c["args"][3:5] == ["+launcher=k8s", "experiment=gpt_1b"]
    assert c["args"][-1] == "run.id=gpt-1b-run"


def test_shm_is_memory_backed_and_sized_for_the_loaders(job):
    volumes = {v["name"]: v for v in job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    # 8 ranks x 4 loader workers x 64 MiB = 2 GiB, plus 1 GiB for NCCL
    assert volumes["dshm"]["emptyDir"]["sizeLimit"] == "3Gi"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container(job)["volumeMounts"]
    assert volumes["runs"]["persistentVolumeClaim"]["claimName"] == "runs"
    assert env_of(job)["TRAINER_RUNS_DIR"]["value"] == "/mnt/runs"
    more_workers = render_pytorchjob(spec_for("k8s", "experiment=gpt_1b", IMAGE, "data.num_workers=16"), job_name="j")
    size = more_workers["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["volumes"][0]["emptyDir"]["sizeLimit"]
    assert size == "9Gi"


def test_env_for_nccl_and_wandb_secret_reference(job, monkeypatch):
    env = env_of(job)
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"]["value"] == "1"
    assert env["NCCL_SOCKET_IFNAME"]["value"] == "eth0"
    assert env["WANDB_API_KEY"] == {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "wandb", "key": "api-key", "optional": True}}}
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef-secret")
    text = to_yaml(render_pytorchjob(spec_for("k8s", "experiment=gpt_1b", IMAGE), job_name="j"))
    assert "0123456789abcdef-secret" not in text


def test_schema_check_catches_mistakes(job):
    bad = copy.deepcopy(job)
    container(bad)["imagePullPolicy"] = "IfNotPresent"
    container(bad)["shmSize"] = "8Gi"  # not a Container field
    bad["spec"]["elasticPolicy"]["maxRestart"] = 3  # typo
    bad["spec"]["pytorchReplicaSpecs"]["Worker"]["restartPolicy"] = "Sometimes"
    problems = "\n".join(validate_pytorchjob(bad))
    assert "shmSize" in problems and "maxRestart" in problems and "restartPolicy" in problems
    bad = copy.deepcopy(job)
    bad["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "two"
    assert any("replicas" in p for p in validate_pytorchjob(bad))


def test_image_is_required():
    with pytest.raises(UserError, match="launcher.image"):
        render_pytorchjob(spec_for("k8s", "experiment=gpt_1b"))


def test_explicit_shm_size_and_typos():
    spec = spec_for("k8s", IMAGE, "launcher.shm_size=16Gi")
    assert render_pytorchjob(spec, "j")["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["volumes"][0][
        "emptyDir"]["sizeLimit"] == "16Gi"
    with pytest.raises(UserError, match="shm_size"):
        render_pytorchjob(spec_for("k8s", IMAGE, "launcher.shm_size=lots"), "j")


def test_cli_writes_a_valid_manifest(tmp_path):
    out = tmp_path / "job.yaml"
    r = cli("launch.k8s", "experiment=gpt2_124m", IMAGE, "--name", "gpt2-a", "--out", str(out), timeout=120)
    assert r.returncode == 0, r.stderr
    manifest = yaml.safe_load(out.read_text())
    assert manifest["metadata"]["name"] == "gpt2-a" and validate_pytorchjob(manifest) == []
    assert manifest["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
