"""Kubernetes: render a Kubeflow PyTorchJob (training-operator, kubeflow.org/v1) from the run config.

    python -m launch.k8s experiment=gpt_1b launcher.image=registry.example.com/trainer:1.0 [--out job.yaml]
    kubectl create -f job.yaml

One Worker pod per node (trainer.num_nodes), trainer.devices GPUs and ranks per pod, started by
torchrun from the operator's PET_* variables with an elastic c10d policy, so a lost pod is
replaced and the ranks restart from the newest valid checkpoint. /dev/shm is a memory-backed
volume sized for the loader workers; the W&B key comes from a Secret, never a literal.
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


def render_pytorchjob(spec: JobSpec, job_name: str | None = None) -> dict[str, Any]:
    """The PyTorchJob manifest as a dict (yaml.safe_dump it)."""
    lc = spec.launcher
    if not lc.image:
        raise UserError("launcher.image is required for Kubernetes: the image built from this repo's Dockerfile, e.g."
                        " launcher.image=registry.example.com/trainer:1.0")
    name = dns_name(job_name or lc.job_name or f"{spec.job_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    overrides = list(spec.overrides)
    if not any(o.lstrip("+").startswith("run.id=") for o in overrides):
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
    }
    if spec.gpus_per_node:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(spec.gpus_per_node)}}  # a quantity: a string in the API
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": lc.namespace, "labels": {"app.kubernetes.io/name": "trainer",
                                                                         "trainer/run-name": dns_name(spec.job_name)}},
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
                    "template": {
                        "metadata": {"labels": {"app.kubernetes.io/name": "trainer"}},
                        "spec": {"containers": [container], "volumes": volumes},
                    },
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
        spec = compose_spec("k8s", args.overrides)
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
