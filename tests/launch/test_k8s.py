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


def pod(job: dict) -> dict:
    return job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]


def test_pods_run_unprivileged_request_cpus_and_outlive_the_preemption_save(job):
    spec = pod(job)["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
    assert container(job)["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert container(job)["resources"]["requests"]["cpu"] == "40"  # 8 ranks x (4 loader workers + 1)
    # gpt_1b: ~1.1e9 parameters x 16 bytes over 2 nodes, written twice over at 200 MB/s, plus the margin;
    # far above Kubernetes' 30 s default, at which a ZeRO-3 save during an eviction is SIGKILLed
    grace = spec["terminationGracePeriodSeconds"]
    assert 120 + 2 * 1.0e9 * 16 / 2 / 200e6 < grace < 120 + 2 * 1.3e9 * 16 / 2 / 200e6, grace
    slower = render_pytorchjob(spec_for("k8s", "experiment=gpt_1b", IMAGE, "launcher.checkpoint_write_mb_s=50"), "j")
    assert pod(slower)["spec"]["terminationGracePeriodSeconds"] > grace
    fixed = render_pytorchjob(spec_for("k8s", "experiment=gpt_1b", IMAGE, "launcher.termination_grace_s=900"), "j")
    assert pod(fixed)["spec"]["terminationGracePeriodSeconds"] == 900


def test_scheduling_passes_through_and_a_pod_template_file_is_merged(tmp_path):
    template = tmp_path / "pod.yaml"
    template.write_text(yaml.safe_dump({
        "metadata": {"annotations": {"team": "nlp"}},
        "spec": {"priorityClassName": "high",
                 "containers": [{"name": "pytorch", "imagePullPolicy": "Always"},
                                {"name": "sidecar", "image": "busybox", "args": ["sleep", "infinity"]}]}}))
    job = render_pytorchjob(spec_for(
        "k8s", "experiment=gpt_1b", IMAGE, "+launcher.node_selector.gpu=h100", "launcher.queue=team-a",
        "launcher.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
        "+launcher.resources.limits.memory=400Gi", f"launcher.pod_template={template}"), "j")
    assert validate_pytorchjob(job) == []
    spec = pod(job)["spec"]
    assert spec["nodeSelector"] == {"gpu": "h100"} and spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert pod(job)["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert pod(job)["metadata"]["annotations"] == {"team": "nlp"} and spec["priorityClassName"] == "high"
    main, sidecar = spec["containers"]
    assert main["imagePullPolicy"] == "Always" and main["image"] == "registry.example.com/trainer:1.0"  # merged by name
    assert main["resources"]["limits"] == {"nvidia.com/gpu": "8", "memory": "400Gi"}
    assert sidecar["name"] == "sidecar"
    (tmp_path / "bad.yaml").write_text("containers: []\n")
    with pytest.raises(UserError, match="must be a pod template"):
        render_pytorchjob(spec_for("k8s", IMAGE, f"launcher.pod_template={tmp_path / 'bad.yaml'}"), "j")


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
    r = cli("launch.k8s", "experiment=gpt2_124m", IMAGE, "--name", "gpt2-a", "--out", str(out), timeout=300)
    assert r.returncode == 0, r.stderr
    manifest = yaml.safe_load(out.read_text())
    assert manifest["metadata"]["name"] == "gpt2-a" and validate_pytorchjob(manifest) == []
    assert manifest["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
