"""Offline schema checks for a rendered PyTorchJob.

Two published schemas, no cluster needed:
- the Kubeflow training-operator's own API models (PyPI `kubeflow-training`, kubeflow.org/v1):
  every field name and simple type of the PyTorchJob, down to the pod template;
- the Kubernetes JSON schemas (PyPI `kubernetes-validate`, strict: no unknown fields) for each
  replica's pod template, which also checks required fields and value types of the core API.
"""
from __future__ import annotations

import re
from typing import Any

import kubernetes.client.models as k8s_models
import kubernetes_validate
from kubeflow.training import models as kf_models

_PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "datetime": str, "date": str}
REPLICA_TYPES = ("Master", "Worker")
REPLICA_RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")


def validate_pytorchjob(manifest: dict[str, Any], k8s_version: str | None = None) -> list[str]:
    """All problems found, as 'path: message' lines; [] when the manifest is valid."""
    problems = _check_model(manifest, "KubeflowOrgV1PyTorchJob", "")
    if manifest.get("apiVersion") != "kubeflow.org/v1" or manifest.get("kind") != "PyTorchJob":
        problems.append("apiVersion/kind: must be kubeflow.org/v1 PyTorchJob")
    specs = (manifest.get("spec") or {}).get("pytorchReplicaSpecs") or {}
    if not specs:
        problems.append("spec.pytorchReplicaSpecs: at least one replica type is required")
    version = k8s_version or kubernetes_validate.latest_version()
    for rtype, rspec in specs.items():
        where = f"spec.pytorchReplicaSpecs.{rtype}"
        if rtype not in REPLICA_TYPES:
            problems.append(f"{where}: replica type must be one of {', '.join(REPLICA_TYPES)}")
        if rspec.get("restartPolicy") not in (None, *REPLICA_RESTART_POLICIES):
            problems.append(f"{where}.restartPolicy: must be one of {', '.join(REPLICA_RESTART_POLICIES)}")
        containers = ((rspec.get("template") or {}).get("spec") or {}).get("containers") or []
        if not any(c.get("name") == "pytorch" for c in containers):
            problems.append(f"{where}.template.spec.containers: the operator needs a container named 'pytorch'")
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"},
                        "template": rspec.get("template") or {}}
        try:
            kubernetes_validate.validate(pod_template, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in getattr(e, "path", []) or [])
            problems.append(f"{where}.{path or 'template'}: {str(e).splitlines()[0]}")
    return problems


def _model(name: str):
    return getattr(kf_models, name, None) or getattr(k8s_models, name, None)


def _check_model(value: Any, type_name: str, path: str) -> list[str]:
    """Walk `value` against an OpenAPI model type string ('V1Container', 'list[V1EnvVar]', 'dict(str, X)')."""
    if value is None:
        return []
    m = re.fullmatch(r"list\[(.+)\]", type_name)
    if m:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [p for i, item in enumerate(value) for p in _check_model(item, m.group(1), f"{path}[{i}]")]
    m = re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if m:
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {type(value).__name__}"]
        return [p for k, v in value.items() for p in _check_model(v, m.group(1), f"{path}.{k}")]
    if type_name in _PRIMITIVES:
        expected = _PRIMITIVES[type_name]
        if isinstance(value, bool) and type_name != "bool" or not isinstance(value, expected):
            return [f"{path}: expected {type_name}, got {type(value).__name__} {value!r}"]
        return []
    model = _model(type_name)
    if model is None:
        return []  # a type this SDK leaves open (e.g. resource quantities): nothing to check by name
    if not isinstance(value, dict):
        return [f"{path or '.'}: expected an object ({type_name}), got {type(value).__name__}"]
    json_to_attr = {json_key: attr for attr, json_key in model.attribute_map.items()}
    problems = []
    for key, item in value.items():
        attr = json_to_attr.get(key)
        where = f"{path}.{key}" if path else key
        if attr is None:
            problems.append(f"{where}: unknown field of {type_name} (valid: {', '.join(sorted(json_to_attr))})")
        else:
            problems += _check_model(item, model.openapi_types[attr], where)
    return problems
