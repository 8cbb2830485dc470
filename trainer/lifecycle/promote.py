"""Evaluation-gated promotion: a candidate becomes the champion only if it is better on the same tokens.

promote(run_dir): export the run (HF format) if needed; fix the held-out tokens (the candidate's
validation split, or promote.eval_tokens); evaluate the candidate's export; then, holding the
registry lock, evaluate the current @champion's artifact on the same tokens, decide, register
the candidate as a new version with its lineage and metrics, move the aliases and append the
decision to the log. Everything that can fail on bad input (no run, no bar, registry down,
another tokenizer) fails before the first write.

Decisions: promoted (candidate -> @champion), refused (the champion stays), pending (with
promote.require_approval: a person runs approve or reject), approved, rejected, rolled_back.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from trainer.config import PromoteConfig, RegistryConfig
from trainer.errors import UserError
from trainer.files import atomic_write_json
from trainer.lifecycle.registry import DecisionLog, Registry, Version, link_to_wandb
from trainer.tracking.run_dir import RunDir

PROMOTED_EXIT, REFUSED_EXIT, PENDING_EXIT = 0, 3, 4
EVAL_KEYS = ("loss", "perplexity", "bits_per_byte", "tokens")


@dataclass
class Decision:
    action: str  # promote | approve | reject | rollback
    decision: str  # promoted | refused | pending | approved | rejected | rolled_back
    model: str
    version: int
    reason: str
    by: str
    champion_before: int | None
    champion_after: int | None
    metric: str | None = None
    candidate: dict[str, Any] = field(default_factory=dict)
    champion: dict[str, Any] | None = None
    thresholds: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    registry: str = ""
    time: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def exit_code(self) -> int:
        return {"refused": REFUSED_EXIT, "pending": PENDING_EXIT}.get(self.decision, PROMOTED_EXIT)


@dataclass
class Context:
    """Where decisions go: the registry and its decision log."""

    registry: Registry
    log: DecisionLog
    registry_cfg: RegistryConfig

    @classmethod
    def open(cls, rcfg: RegistryConfig, runs_dir: Path) -> "Context":
        from trainer.config import check_registry_config

        check_registry_config(rcfg)
        registry = Registry.open(rcfg.uri, runs_dir, rcfg.lock_timeout_s, rcfg.request_timeout_s)
        log_path = Path(rcfg.decision_log).expanduser() if rcfg.decision_log else (
            Path(runs_dir).expanduser().absolute() / "registry" / "decisions.jsonl")
        return cls(registry, DecisionLog(log_path.absolute()), rcfg)


def who(by: str | None) -> str:
    if by:
        return by
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # noqa: BLE001 - no user name in some containers
        return f"unknown@{socket.gethostname()}"


class Evaluator(Protocol):
    """How models are exported and scored (trainer/evaluate.py, given by the entry point)."""

    def export(self, run_dir: Path) -> tuple[Path, int]:
        """The HF export of the run's newest valid checkpoint (made if missing), and its step."""

    def tokens(self, run_dir: Path, max_tokens: int | None):
        """The fixed held-out tokens of a run's validation split: .fingerprint, .tokenizer, .describe()."""

    def evaluate(self, model_dir: Path, tokens) -> dict[str, Any]:
        """loss, perplexity, bits_per_byte, tokens; UserError for a model of another tokenizer."""


# --------------------------------------------------------------------------- promote
def promote(ctx: Context, run_dir: Path, model: str, p: PromoteConfig, *, evaluator: Evaluator,
            by: str | None = None) -> Decision:
    from trainer.config import check_promote_config

    check_promote_config(p)
    _quiet_transformers()
    run_dir = Path(run_dir).absolute()
    _check_name(model)
    if p.max_loss is None and ctx.registry.by_alias(model, "champion") is None:
        raise _no_bar(model)
    lineage = run_lineage(run_dir)
    export_dir, step = evaluator.export(run_dir)
    export_sha = _sha256(export_dir / "model.safetensors")
    decided = ctx.registry.find(model, **{"trainer.run_id": lineage["trainer.run_id"], "export.sha256": export_sha})
    if decided is not None and decided.decision:  # a decision is final: a re-run (the pipeline after a kill) reads it
        with ctx.registry.lock():
            return _already_decided(ctx, decided, run_dir)
    tokens = evaluator.tokens(Path(p.eval_tokens).expanduser().absolute() if p.eval_tokens else run_dir, p.eval_max_tokens)
    cand = evaluator.evaluate(export_dir, tokens)  # a tokenizer other than the tokens' is a UserError here, before any write
    candidate = {k: cand[k] for k in EVAL_KEYS} | {"step": step, "export_sha256": export_sha}
    with ctx.registry.lock():
        existing = ctx.registry.find(model, **{"trainer.run_id": lineage["trainer.run_id"], "export.sha256": export_sha})
        if existing is not None and existing.decision:
            return _already_decided(ctx, existing, run_dir)
        champion = ctx.registry.by_alias(model, "champion")
        if champion is None and p.max_loss is None:
            raise _no_bar(model)
        champ = _evaluate_version(ctx.registry, champion, tokens, evaluator) if champion else None
        decision, reason = decide(candidate[p.metric], champ[p.metric] if champ else None, p)
        tags = {**lineage, "checkpoint.step": step, "export.sha256": export_sha,
                **{f"eval.{k}": candidate[k] for k in EVAL_KEYS}, "eval.metric": p.metric,
                "eval.tokens_fingerprint": tokens.fingerprint, "eval.tokens_source": json.dumps(tokens.source, sort_keys=True),
                "tokenizer": tokens.tokenizer}
        version = existing or ctx.registry.register(model, export_dir, run_name=lineage["trainer.run_id"], tags=tags,
                                                    metrics={f"eval_{k}": candidate[k] for k in EVAL_KEYS})
        record = Decision(
            action="promote", decision=decision, model=model, version=version.version, reason=reason, by=who(by),
            champion_before=champion.version if champion else None,
            champion_after=version.version if decision == "promoted" else (champion.version if champion else None),
            metric=p.metric, candidate=candidate, champion=({"version": champion.version, **champ} if champion else None),
            thresholds={"min_delta": p.min_delta, "max_loss": p.max_loss, "require_approval": p.require_approval},
            tokens=tokens.describe(), run_id=lineage["trainer.run_id"], registry=ctx.registry.uri)
        _record(ctx, record, version, extra_tags={"compared_to": champion.version if champion else "none"})
        ctx.registry.set_alias(model, "candidate", version.version)
        if decision == "promoted":
            ctx.registry.set_alias(model, "champion", version.version)
    _write_decision(run_dir, record)
    if decision == "promoted" and ctx.registry_cfg.wandb_link:
        _link(run_dir, export_dir, model, version.version, record)
    return record


def decide(candidate: float, champion: float | None, p: PromoteConfig) -> tuple[str, str]:
    """(promoted | refused | pending, why), lower is better."""
    m = p.metric
    if champion is None:
        ok = candidate <= p.max_loss
        why = (f"no champion yet; candidate {m} {candidate:.6f} {'<=' if ok else '>'} the absolute bar "
               f"promote.max_loss={p.max_loss}")
    else:
        gain = champion - candidate
        ok = gain > p.min_delta
        why = (f"candidate {m} {candidate:.6f} vs champion {champion:.6f} on the same tokens: improvement {gain:+.6f} "
               f"{'>' if ok else '<='} promote.min_delta={p.min_delta}")
    if not ok:
        return "refused", why
    return ("pending", why + "; waiting for approval (promote.require_approval=true)") if p.require_approval else ("promoted", why)


def _evaluate_version(registry: Registry, version: Version, tokens, evaluator: Evaluator) -> dict[str, Any]:
    """The version's registered artifact, downloaded and evaluated on `tokens`."""
    tmp = Path(tempfile.mkdtemp(prefix=f"champion-v{version.version}-"))
    try:
        path = registry.download(version, tmp)
        result = evaluator.evaluate(path, tokens)
    except UserError as e:
        raise UserError(f"the champion (version {version.version}) cannot be evaluated on the candidate's tokens: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {k: result[k] for k in EVAL_KEYS}


def _already_decided(ctx: Context, version: Version, run_dir: Path) -> Decision:
    """This very export was registered before (a re-run, e.g. the pipeline after a kill): its decision stands.
    Called under the registry lock. A process killed after the decision was recorded but before the aliases
    moved (or before promotion.json was written) left the registry behind its decision log: this repairs it."""
    records = [r for r in ctx.log.records() if r.get("model") == version.name]
    _repair_aliases(ctx, version.name, records)
    mine = [r for r in records if r.get("action") == "promote" and r.get("version") == version.version]
    names = {f.name for f in fields(Decision)}
    if mine:
        record = Decision(**{k: v for k, v in mine[-1].items() if k in names})
    else:  # recorded in a decision log elsewhere (registry.decision_log changed): the version's tags say what it was
        record = Decision(action="promote", decision=version.decision or "unknown", model=version.name,
                          version=version.version, reason=version.tags.get("decision.reason", "decided before"),
                          by=version.tags.get("decision.by", ""), champion_before=None, champion_after=None,
                          run_id=version.tags.get("trainer.run_id"))
    _write_decision(run_dir, record)  # what the pipeline reads back
    return record


def _repair_aliases(ctx: Context, model: str, records: list[dict[str, Any]]) -> None:
    """@champion to the decision log's last champion_after, @candidate to its last promotion's version. Every
    decision writes its log line before it moves an alias, so the log is the later of the two."""
    champion_after = records[-1].get("champion_after") if records else None
    promoted = [r["version"] for r in records if r.get("action") == "promote"]
    for alias, want in (("champion", champion_after), ("candidate", promoted[-1] if promoted else None)):
        if want is None:
            continue
        have = ctx.registry.by_alias(model, alias)
        if have is None or have.version != int(want):
            ctx.registry.set_alias(model, alias, int(want))
            print(f"repaired: @{alias} of {model!r} pointed at {f'version {have.version}' if have else 'nothing'}; "
                  f"the decision log ({ctx.log.path}) says version {want} (a process stopped between the two writes)")


def _quiet_transformers() -> None:
    """No per-load progress bars in a decision's output."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def _no_bar(model: str) -> UserError:
    return UserError(f"model {model!r} has no champion yet and promote.max_loss is not set: the first version needs an "
                     "absolute bar. Set promote.max_loss=LOSS (e.g. the loss a useful model must reach on these tokens).")


def _check_name(model: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}", model or ""):
        raise UserError(f"model={model!r}: a registered model name holds letters, digits, '.', '_' and '-'")


# --------------------------------------------------------------------------- approve, reject, rollback
def approve(ctx: Context, model: str, version: int, *, by: str, reason: str, accept: bool = True) -> Decision:
    _require_person(by, reason)
    ctx.registry.require_model(model)
    with ctx.registry.lock():
        v = ctx.registry.get(model, version)
        if v.decision != "pending":
            raise UserError(f"version {version} of {model!r} is not pending approval (its decision: {v.decision or 'none'}); "
                            "only a version registered with promote.require_approval=true waits for one.")
        champion = ctx.registry.by_alias(model, "champion")
        compared = v.tags.get("compared_to", "none")
        now = str(champion.version) if champion else "none"
        if accept and compared != now:
            raise UserError(f"the champion changed since version {version} was evaluated (it was compared with {compared}, "
                            f"the champion is now {now}): run promote again for this run to compare it with the new champion.")
        decision = "approved" if accept else "rejected"
        record = Decision(action="approve" if accept else "reject", decision=decision, model=model, version=version,
                          reason=reason, by=by, champion_before=champion.version if champion else None,
                          champion_after=version if accept else (champion.version if champion else None),
                          metric=v.tags.get("eval.metric"), candidate=_metrics_of(v), run_id=v.tags.get("trainer.run_id"),
                          registry=ctx.registry.uri)
        _record(ctx, record, v)
        if accept:
            ctx.registry.set_alias(model, "champion", version)
    if accept and ctx.registry_cfg.wandb_link and v.tags.get("trainer.run_dir"):
        run_dir = Path(v.tags["trainer.run_dir"])
        export_dir = RunDir(run_dir).export / "hf"  # trainer.export's format=hf folder
        if export_dir.is_dir():
            _link(run_dir, export_dir, model, version, record)
    return record


def rollback(ctx: Context, model: str, version: int | None, *, by: str, reason: str) -> Decision:
    """Point @champion back at the previous champion (or at `version`, which must have been champion once)."""
    _require_person(by, reason)
    ctx.registry.require_model(model)
    with ctx.registry.lock():
        current = ctx.registry.by_alias(model, "champion")
        if current is None:
            raise UserError(f"model {model!r} has no champion to roll back")
        target = version if version is not None else previous_champion(ctx.log, model, current.version)
        if target is None:
            raise UserError(f"no earlier champion of {model!r} in the decision log {ctx.log.path}: name the version, "
                            f"`promote rollback VERSION --by NAME --reason TEXT model={model}`")
        v = ctx.registry.get(model, target)
        was_champion = any(r.get("model") == model and r.get("champion_after") == target for r in ctx.log.records())
        if not was_champion:
            raise UserError(f"version {target} of {model!r} was never the champion; roll back only to a former champion")
        if target == current.version:
            raise UserError(f"version {target} is already the champion")
        record = Decision(action="rollback", decision="rolled_back", model=model, version=current.version, reason=reason,
                          by=by, champion_before=current.version, champion_after=target, metric=v.tags.get("eval.metric"),
                          candidate=_metrics_of(v), run_id=current.tags.get("trainer.run_id"), registry=ctx.registry.uri)
        _record(ctx, record, current)
        ctx.registry.set_tags(model, target, {"restored_at": record.time, "restored_by": by})
        ctx.registry.set_alias(model, "champion", target)
    return record


def previous_champion(log: DecisionLog, model: str, current: int) -> int | None:
    """The champion before `current` became champion, from the decision log."""
    for rec in reversed(log.records()):
        if rec.get("action") == "rollback":
            continue  # a rollback's own record: rolling back again must not return to the version it left
        if rec.get("model") == model and rec.get("champion_after") == current and rec.get("champion_before") not in (None, current):
            return int(rec["champion_before"])
    return None


def status(ctx: Context, model: str) -> dict[str, Any]:
    ctx.registry.require_model(model)
    champion = ctx.registry.by_alias(model, "champion")
    candidate = ctx.registry.by_alias(model, "candidate")
    return {
        "model": model, "registry": ctx.registry.uri, "champion": champion.version if champion else None,
        "candidate": candidate.version if candidate else None,
        "versions": [{"version": v.version, "decision": v.decision, "aliases": v.aliases, "run_id": v.tags.get("trainer.run_id"),
                      "metric": v.tags.get("eval.metric"), "value": v.tags.get(f"eval.{v.tags.get('eval.metric', 'loss')}")}
                     for v in ctx.registry.versions(model)],
    }


def _require_person(by: str | None, reason: str | None) -> None:
    if not by or not reason:
        raise UserError("a person's decision needs --by NAME and --reason TEXT (they go to the registry and the decision log)")


def _metrics_of(v: Version) -> dict[str, Any]:
    return {k.removeprefix("eval."): v.tags[k] for k in v.tags if k.startswith("eval.") and k != "eval.tokens_source"}


# --------------------------------------------------------------------------- recording
def _record(ctx: Context, record: Decision, version: Version, extra_tags: dict | None = None) -> None:
    """The decision onto the version's tags, then one line of the decision log (both under the lock)."""
    prefix = {"promote": "decision", "approve": "approval", "reject": "approval", "rollback": "rollback"}[record.action]
    tags = {"decision": record.decision, f"{prefix}.by": record.by, f"{prefix}.reason": record.reason,
            f"{prefix}.time": record.time, **(extra_tags or {})}
    if record.action == "promote":
        tags |= {"promote.min_delta": record.thresholds.get("min_delta"), "promote.max_loss": record.thresholds.get("max_loss"),
                 "promote.require_approval": record.thresholds.get("require_approval")}
        if record.champion:
            tags |= {f"champion.{k}": record.champion[k] for k in EVAL_KEYS} | {"champion.version": record.champion["version"]}
    ctx.registry.set_tags(record.model, version.version, tags)
    ctx.log.append(asdict(record))


def _write_decision(run_dir: Path, record: Decision) -> None:
    atomic_write_json(RunDir(run_dir).promotion, asdict(record))


def _link(run_dir: Path, export_dir: Path, model: str, version: int, record: Decision) -> None:
    """Mirror the promotion into the W&B Registry when the run's W&B logger entry (logger.wandb) resolves
    to online; project and entity as the run logged them."""
    import os

    from trainer.tracking.loggers import DEFAULT_PROJECT, resolve_wandb_mode
    from trainer.tracking.run_dir import load_frozen

    node = (load_frozen(RunDir(run_dir).config).get("logger") or {}).get("wandb")
    if not node or resolve_wandb_mode(node.get("mode") or "auto") != "online":
        return
    target = link_to_wandb(export_dir, model, "champion",
                           project=node.get("project") or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                           entity=node.get("entity"), metadata={"mlflow_version": version, "decision": record.decision,
                                                                "run_id": record.run_id, **record.candidate})
    if target:
        print(f"linked into the W&B Registry: {target}:champion")


# --------------------------------------------------------------------------- lineage
def run_lineage(run_dir: Path) -> dict[str, str]:
    """What a version traces back to: the run, its code, its data, its config."""
    rd = RunDir(run_dir)
    if not rd.is_run_dir():
        raise UserError(f"run.dir={run_dir} is not a run dir (no {rd.config.name} there)")
    manifest_path = rd.manifest
    if not manifest_path.is_file():
        raise UserError(f"{run_dir} has no {manifest_path.name}: is it a run dir that trained?")
    manifest = json.loads(manifest_path.read_text())
    git = manifest.get("git") or {}
    return {
        "trainer.run_id": manifest.get("run_id") or run_dir.name,
        "trainer.run_dir": str(run_dir),
        "git.sha": git.get("sha") or "unknown",
        "git.dirty": str(git.get("dirty")),
        "data.fingerprint": manifest.get("data_fingerprint") or "unknown",
        "config.hash": config_hash(rd.config),
    }


def config_hash(path: Path) -> str:
    """sha256 of the resolved training config without the run's identity (run.id, run.dir): the same settings
    give the same hash in every run."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    run = cfg.get("run") or {}
    cfg["run"] = {k: v for k, v in run.items() if k not in ("id", "dir")}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
