"""The model registry: MLflow Model Registry, a local SQLite file by default, any MLflow server for a team.

A registered model has versions; each version is one training run's HF export (logged as the
artifacts of an MLflow run named after the training run, so the version's lineage is that run)
with tags: the run id, git sha and dirty flag, data fingerprint, config hash, eval metrics and
the eval tokens' fingerprint, and the promotion decision. Aliases: `champion` (what is served)
and `candidate` (the latest version evaluated for promotion).

Read-decide-write sequences (promote, approve, rollback) hold `Registry.lock()`: a file lock next
to the SQLite file (so two promotions on one registry take turns) plus MLflow's own database
transactions for each write. With a remote server the lock file lives under the local runs dir
and only serializes promotions started from this machine (or from machines sharing that directory).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from trainer.errors import UserError, closest
from trainer.files import append_line_durably

log = logging.getLogger("trainer")
EXPERIMENT = "trainer-registry"
ARTIFACT_PATH = "hf"  # where a version's HF export sits among its MLflow run's artifacts
ALIASES = ("candidate", "champion")


@dataclass
class Version:
    name: str
    version: int
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    source: str = ""
    mlflow_run_id: str | None = None

    @property
    def decision(self) -> str | None:
        return self.tags.get("decision")


def default_uri(runs_dir: Path) -> str:
    return f"sqlite:///{(Path(runs_dir).expanduser().absolute() / 'registry' / 'mlflow.db')}"


class Registry:
    """One MLflow registry (tracking and registry URIs are the same)."""

    def __init__(self, uri: str, lock_path: Path, lock_timeout_s: float, artifact_root: str | None):
        from mlflow import MlflowClient

        self.uri, self.lock_path, self.lock_timeout_s, self.artifact_root = uri, lock_path, lock_timeout_s, artifact_root
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    @classmethod
    def open(cls, uri: str | None, runs_dir: Path, lock_timeout_s: float = 900.0, request_timeout_s: float = 10.0) -> "Registry":
        """Open (creating the local SQLite file if needed) and check that it answers; UserError if not."""
        from trainer.lifecycle import require

        require("mlflow", "the model registry")
        _quiet_mlflow()
        runs_dir = Path(runs_dir).expanduser().absolute()
        uri = uri or default_uri(runs_dir)
        if uri.startswith("sqlite:///"):
            db = Path(uri.removeprefix("sqlite:///"))
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
                probe = db.parent / f".write-test-{os.getpid()}"
                probe.write_text("ok")
                probe.unlink()
            except OSError as e:
                raise UserError(f"registry.uri={uri}: cannot write to {db.parent} ({e.strerror or e}). Point registry.uri "
                                "(or paths.runs_dir) at a writable place.") from None
            lock_path, artifact_root = db.with_suffix(".lock"), str(db.parent / "artifacts")
        else:
            # A server: fail fast instead of MLflow's default minutes of retries.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(request_timeout_s)))
            lock_dir = runs_dir / "registry"
            lock_dir.mkdir(parents=True, exist_ok=True)
            lock_path = lock_dir / f"{hashlib.sha256(uri.encode()).hexdigest()[:12]}.lock"
            artifact_root = None  # the server's artifact store
        registry = cls(uri, lock_path, lock_timeout_s, artifact_root)
        try:
            registry.client.search_registered_models(max_results=1)
        except Exception as e:  # noqa: BLE001 - connection refused, DNS, auth, a broken database: all "unreachable"
            raise UserError(
                f"the model registry at registry.uri={uri} is unreachable ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                "Check the server address and that it is running, or leave registry.uri unset for the local SQLite registry."
            ) from None
        return registry

    # ------------------------------------------------------------------ reading
    def model_names(self) -> list[str]:
        return sorted(m.name for m in self.client.search_registered_models(max_results=1000))

    def has_model(self, name: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
            return True
        except MlflowException:
            return False

    def require_model(self, name: str) -> None:
        if not self.has_model(name):
            names = self.model_names()
            raise UserError(f"model={name!r} is not a registered model in {self.uri}.{closest(name, names)} "
                            f"Registered: {', '.join(names) or 'none yet'}.")

    def versions(self, name: str) -> list[Version]:
        found = self.client.search_model_versions(f"name = '{_quote(name)}'", max_results=10_000)
        aliases: dict[int, list[str]] = {}
        for alias, version in (self.client.get_registered_model(name).aliases or {}).items():
            aliases.setdefault(int(version), []).append(alias)
        out = [self._version(v) for v in found]
        for v in out:  # a search does not return aliases
            v.aliases = sorted(aliases.get(v.version, []))
        return sorted(out, key=lambda v: v.version)

    def get(self, name: str, version: int) -> Version:
        from mlflow.exceptions import MlflowException

        self.require_model(name)
        try:
            return self._version(self.client.get_model_version(name, str(version)))
        except MlflowException:
            known = [v.version for v in self.versions(name)]
            raise UserError(f"model {name!r} has no version {version} (versions: {', '.join(map(str, known)) or 'none'})") from None

    def by_alias(self, name: str, alias: str) -> Version | None:
        from mlflow.exceptions import MlflowException

        if not self.has_model(name):
            return None
        try:
            return self._version(self.client.get_model_version_by_alias(name, alias))
        except MlflowException:
            return None

    def find(self, name: str, **tags: str) -> Version | None:
        """The newest version whose tags include all of `tags`."""
        if not self.has_model(name):
            return None
        matches = [v for v in self.versions(name) if all(v.tags.get(k) == str(t) for k, t in tags.items())]
        return matches[-1] if matches else None

    def _version(self, mv) -> Version:
        return Version(name=mv.name, version=int(mv.version), tags=dict(mv.tags or {}), aliases=list(mv.aliases or []),
                       source=mv.source, mlflow_run_id=mv.run_id)

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialize read-decide-write sequences on this registry."""
        from filelock import FileLock, Timeout

        try:
            with FileLock(str(self.lock_path), timeout=self.lock_timeout_s):
                yield
        except Timeout:
            raise UserError(f"waited {self.lock_timeout_s}s for {self.lock_path}: another promotion holds the registry. "
                            "Let it finish, or raise registry.lock_timeout_s.") from None

    def register(self, name: str, export_dir: Path, *, run_name: str, tags: dict[str, Any], metrics: dict[str, float]) -> Version:
        """A new version from an HF export directory: all of it, or (on any failure) none of it."""
        from mlflow.exceptions import MlflowException

        if not self.has_model(name):
            try:
                self.client.create_registered_model(name, description="GPT checkpoints exported in Hugging Face format")
            except MlflowException as e:  # created meanwhile by a process holding no lock (status, another tool)
                if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                    raise
        str_tags = {k: "" if v is None else str(v) for k, v in tags.items()}
        run_id = mv = None
        try:
            run = self.client.create_run(self._experiment_id(), run_name=run_name, tags=str_tags)
            run_id = run.info.run_id
            for key, value in metrics.items():
                if value is not None:
                    self.client.log_metric(run_id, key, float(value))
            self.client.log_artifacts(run_id, str(export_dir), ARTIFACT_PATH)
            self.client.set_terminated(run_id)
            mv = self.client.create_model_version(name, f"runs:/{run_id}/{ARTIFACT_PATH}", run_id=run_id, tags=str_tags)
            return self._version(self.client.get_model_version(name, mv.version))
        except BaseException:
            if mv is not None:
                _quietly(self.client.delete_model_version, name, mv.version)
            if run_id is not None:
                _quietly(self.client.delete_run, run_id)
            raise

    def set_tags(self, name: str, version: int, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, "" if value is None else str(value))

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def download(self, version: Version, dst: Path) -> Path:
        """The version's HF export, copied into dst (a fresh directory)."""
        import mlflow.artifacts

        dst.mkdir(parents=True, exist_ok=True)
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{version.mlflow_run_id}/{ARTIFACT_PATH}",
                                                   dst_path=str(dst), tracking_uri=self.uri)
        return Path(path)

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(EXPERIMENT)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(EXPERIMENT, artifact_location=self.artifact_root)
        except MlflowException:  # created meanwhile
            return self.client.get_experiment_by_name(EXPERIMENT).experiment_id


def _quote(name: str) -> str:
    return name.replace("'", "\\'")


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - cleanup after a failure: the first error is the one to report
        log.warning("registry cleanup: %s%s failed (%s)", fn.__name__, args, e)


def _quiet_mlflow() -> None:
    """MLflow's INFO lines (database migrations, 'Created version') are not the user's business."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


# --------------------------------------------------------------------------- the decision log
class DecisionLog:
    """Append-only JSON lines; each record carries the sha256 of the line before it, so an edited or
    removed line breaks the chain (`verify`)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = self._lines()
        record = {**record, "prev_sha256": hashlib.sha256(lines[-1].encode()).hexdigest() if lines else None}
        line = json.dumps(record, sort_keys=True, default=str)
        append_line_durably(self.path, line)
        return record

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._lines()]

    def verify(self) -> list[str]:
        """Problems with the chain (empty: intact)."""
        problems, prev = [], None
        for i, line in enumerate(self._lines()):
            rec = json.loads(line)
            if rec.get("prev_sha256") != prev:
                problems.append(f"line {i + 1}: its prev_sha256 does not match line {i}")
            prev = hashlib.sha256(line.encode()).hexdigest()
        return problems

    def _lines(self) -> list[str]:
        if not self.path.is_file():
            return []
        return [line for line in self.path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- W&B Registry
def link_to_wandb(export_dir: Path, name: str, alias: str, *, project: str, entity: str | None, metadata: dict) -> str | None:
    """Link a promoted version into the W&B Registry (collection `name` of the model registry) with `alias`,
    (the caller decides that W&B is online). Returns the target path, or None (it failed: one warning)."""
    target = f"wandb-registry-model/{name}"
    try:
        import wandb

        run = wandb.init(project=project, entity=entity, job_type="promote", mode="online",
                         settings=wandb.Settings(console="off", save_code=False, disable_git=True, silent=True))
        try:
            art = wandb.Artifact(name, type="model", metadata=metadata)
            art.add_dir(str(export_dir))
            run.log_artifact(art)
            run.link_artifact(art, target, aliases=[alias])
        finally:
            run.finish()
        return target
    except Exception as e:  # noqa: BLE001 - the MLflow registry holds the decision; W&B is a mirror
        log.warning("W&B Registry link failed (%s); the MLflow registry has the decision", e)
        return None
