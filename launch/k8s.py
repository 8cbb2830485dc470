"""Kubernetes: render a Kubeflow PyTorchJob (training-operator, kubeflow.org/v1) from the run config.

    python -m launch.k8s experiment=gpt_1b launcher.image=registry.example.com/trainer:1.0 [--out job.yaml]
    kubectl create -f job.yaml

One Worker pod per node (trainer.num_nodes), trainer.devices GPUs and ranks per pod, started by
torchrun from the operator's PET_* variables with an elastic c10d policy, so a lost pod is
replaced and the ranks restart from the newest valid checkpoint. /dev/shm is a memory-backed
volume sized for the loader workers; the W&B key comes from a Secret, never a literal. Pods run
as the image's unprivileged user, request CPUs for their ranks and loader workers, and get a
termination grace period long enough for the preemption checkpoint an eviction's SIGTERM starts.
Scheduling (nodeSelector, tolerations, a Kueue queue, labels) passes through; a pod-template
file of your own is merged over the rendered one.

Kubeflow Training Operator v1 (`PyTorchJob`) is what is rendered: it is what most clusters run.
Kubeflow Trainer v2 (`TrainJob` + runtimes) is not rendered (README, "Kubernetes").
"""
from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from launch.cli import compose_spec, parser
from launch.config import GIB, JobSpec, parse_size
from launch.torchrun import TORCHRUN_ENV
from trainer.distributed.preflight import required_shm_bytes
from trainer.errors import UserError, exit_on_user_error

CONTAINER_NAME = "pytorch"  # the training-operator finds the training container by this name
RUNS_MOUNT = "/mnt/runs"
# NCCL and the ranks' own shared-memory segments, on top of the loader workers' batches.
SHM_HEADROOM_BYTES = GIB
# Grace period: the step in progress, the ranks' agreement and the manifest/rename, on top of the write
# itself (at launcher.checkpoint_write_mb_s), never under this floor (Kubernetes' default is 30 s).
GRACE_MARGIN_S = 120
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
DEFAULT_ENV = {
    "PYTHONUNBUFFERED": "1",
    "NCCL_DEBUG": "WARN",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",  # a failed collective raises instead of hanging the pod
    **TORCHRUN_ENV,
}


def dns_name(text: str) -> str:
    """A valid Kubernetes object name (RFC 1123 label, at most 63 characters)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:63].rstrip("-") or "trainer"


def shm_size(spec: JobSpec) -> str:
    """launcher.shm_size, else what the loader workers need plus headroom, in whole GiB."""
    if spec.launcher.shm_size:
        parse_size(spec.launcher.shm_size)  # reject a typo here, not at pod start
        return spec.launcher.shm_size
    need = required_shm_bytes(spec.procs_per_node, spec.num_workers) + SHM_HEADROOM_BYTES
    return f"{math.ceil(need / GIB)}Gi"


def termination_grace_s(spec: JobSpec) -> int:
    """launcher.termination_grace_s, else the margin plus twice this node's share of a checkpoint
    written at launcher.checkpoint_write_mb_s."""
    lc = spec.launcher
    if lc.termination_grace_s is not None:
        return int(lc.termination_grace_s)
    per_node = (spec.checkpoint_bytes or 0) / max(1, spec.nodes)
    return GRACE_MARGIN_S + math.ceil(2 * per_node / (lc.checkpoint_write_mb_s * 1e6))


def resources(spec: JobSpec) -> dict[str, Any]:
    """CPU for every rank and its loader workers (requests); the node's GPUs (limits); launcher.resources over them."""
    derived: dict[str, Any] = {"requests": {"cpu": str(spec.procs_per_node * spec.cpus_per_rank)}}
    if spec.gpus_per_node:
        derived["limits"] = {"nvidia.com/gpu": str(spec.gpus_per_node)}  # a quantity: a string in the API
    return deep_merge(derived, dict(spec.launcher.resources))


def deep_merge(base: Any, over: Any) -> Any:
    """`over` merged into `base`: mappings key by key; lists of named items (containers, volumes, env) by
    name; any other value replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: deep_merge(base[k], v) if k in base else v for k, v in over.items()}}
    if isinstance(base, list) and isinstance(over, list) and all(isinstance(x, dict) and "name" in x for x in base + over):
        merged = {x["name"]: x for x in base}
        for x in over:
            merged[x["name"]] = deep_merge(merged[x["name"]], x) if x["name"] in merged else x
        return list(merged.values())
    return over


def pod_template_override(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        data = yaml.safe_load(Path(path).expanduser().read_text())
    except OSError as e:
        raise UserError(f"launcher.pod_template={path}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise UserError(f"launcher.pod_template={path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not set(data) <= {"metadata", "spec"}:
        raise UserError(f"launcher.pod_template={path} must be a pod template: a mapping with metadata and/or spec")
    return data


def render_pytorchjob(spec: JobSpec, job_name: str | None = None) -> dict[str, Any]:
    """The PyTorchJob manifest as a dict (yaml.safe_dump it)."""
    lc = spec.launcher
    if not lc.image:
        raise UserError("launcher.image is required for Kubernetes: the image built from this repo's Dockerfile, e.g."
                        " launcher.image=registry.example.com/trainer:1.0")
    name = dns_name(job_name or lc.job_name or f"{spec.job_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    overrides = spec.train_args()
    if not any(o.lstrip("+").startswith("run.id=") for o in spec.overrides):
        overrides.append(f"run.id={name}")  # the job's name: every pod and every restart shares the run dir
    env = [{"name": k, "value": str(v)} for k, v in {**DEFAULT_ENV, **lc.env}.items()]
    if lc.wandb_secret:
        env.append({"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {
            "name": lc.wandb_secret, "key": "api-key", "optional": True}}})  # no Secret: W&B runs offline
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size(spec)}}]
    if lc.runs_volume_claim:
        env.append({"name": "TRAINER_RUNS_DIR", "value": RUNS_MOUNT})
        mounts.append({"name": "runs", "mountPath": RUNS_MOUNT})
        volumes.append({"name": "runs", "persistentVolumeClaim": {"claimName": lc.runs_volume_claim}})
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": lc.image,
        "imagePullPolicy": "IfNotPresent",
        "workingDir": lc.workdir,
        # args, not command: the image's entrypoint still runs (environment defaults) and execs torchrun,
        # which reads its layout from the operator's PET_NNODES / PET_NPROC_PER_NODE / PET_RDZV_* variables.
        "args": ["torchrun", "-m", "trainer.train", *overrides],
        "env": env,
        "volumeMounts": mounts,
        "resources": resources(spec),
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    labels = {"app.kubernetes.io/name": "trainer", "trainer/run-name": dns_name(spec.job_name), **lc.labels}
    if lc.queue:
        labels[QUEUE_LABEL] = lc.queue
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        # an eviction's SIGTERM starts the preemption checkpoint: the pod must live until it is written
        "terminationGracePeriodSeconds": termination_grace_s(spec),
        "securityContext": {"runAsNonRoot": True, "runAsUser": lc.run_as_user, "runAsGroup": lc.run_as_user,
                            "fsGroup": lc.run_as_user},  # fsGroup: the runs volume is writable by that user
    }
    if lc.node_selector:
        pod_spec["nodeSelector"] = dict(lc.node_selector)
    if lc.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in lc.tolerations]
    template = deep_merge({"metadata": {"labels": dict(labels)}, "spec": pod_spec}, pod_template_override(lc.pod_template))
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": lc.namespace, "labels": labels},
        "spec": {
            "nprocPerNode": str(spec.procs_per_node),
            "elasticPolicy": {
                "rdzvBackend": "c10d",
                "minReplicas": lc.min_nodes or spec.nodes,
                "maxReplicas": spec.nodes,
                "maxRestarts": lc.max_restarts,
            },
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": lc.max_restarts},
            "pytorchReplicaSpecs": {
                "Worker": {
                    "replicas": spec.nodes,
                    "restartPolicy": lc.restart_policy,
                    "template": template,
                }
            },
        },
    }


def to_yaml(manifest: dict[str, Any]) -> str:
    return yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False)


def main(argv: Sequence[str] | None = None) -> None:
    p = parser("k8s", "Render a Kubeflow PyTorchJob manifest for a training run.")
    p.add_argument("--out", type=Path, help="write the manifest here (default: print it)")
    p.add_argument("--name", help="the PyTorchJob's name, which is also the run id (default: <run.name>-<time>)")
    args = p.parse_intermixed_args(argv)
    with exit_on_user_error():
        spec = compose_spec("k8s", args.overrides, args.config_dir)
        manifest = render_pytorchjob(spec, args.name)
        problems = validation_problems(manifest)
        if problems:
            raise UserError("the rendered PyTorchJob does not validate:\n  " + "\n  ".join(problems))
    text = to_yaml(manifest)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}; start it with: kubectl create -f {args.out}", file=sys.stderr)
    else:
        print(text, end="")


def validation_problems(manifest: dict[str, Any]) -> list[str]:
    """Schema problems, or [] (with a note on stderr when the schema packages are missing)."""
    try:
        from launch.k8s_schema import validate_pytorchjob
    except ImportError as e:
        print(f"note: manifest not schema-checked ({e}); pip install kubeflow-training kubernetes-validate", file=sys.stderr)
        return []
    return validate_pytorchjob(manifest)


if __name__ == "__main__":
    main()
