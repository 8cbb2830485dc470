"""Evaluation-gated promotion into the model registry, human approval, rollback.

    python -m trainer.promote run.dir=PATH model=NAME [promote.KEY=VALUE ...] [registry.KEY=VALUE ...]
    python -m trainer.promote approve VERSION --by NAME --reason TEXT model=NAME
    python -m trainer.promote reject  VERSION --by NAME --reason TEXT model=NAME
    python -m trainer.promote rollback [VERSION] --by NAME --reason TEXT model=NAME
    python -m trainer.promote status model=NAME

The candidate (the run's newest checkpoint, exported in HF format) and the current @champion are
evaluated on the same fixed, fingerprinted tokens (the candidate's validation split, or
promote.eval_tokens=RUN_DIR for that run's). The candidate is promoted when it improves the
metric (promote.metric=loss|bits_per_byte) by more than promote.min_delta, or, with no champion
yet, when it reaches promote.max_loss. With promote.require_approval=true it waits as `pending`.
Every decision goes to the version's tags and to the append-only decision log
(registry.decision_log, default <paths.runs_dir>/registry/decisions.jsonl).

The registry: registry.uri (default sqlite:///<paths.runs_dir>/registry/mlflow.db; paths.runs_dir
defaults to $TRAINER_RUNS_DIR or ./runs, as for training).

Exit codes: 0 promoted / approved / rejected / rolled back, 3 refused, 4 pending approval, 2 bad input.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import fields
from pathlib import Path

from trainer.errors import UserError, exit_on_user_error

ACTIONS = ("approve", "reject", "rollback", "status")


def main(argv: list[str] | None = None) -> None:
    from trainer.cli_args import exit_with_usage_if_asked

    args = sys.argv[1:] if argv is None else argv
    exit_with_usage_if_asked(args, __doc__)
    with exit_on_user_error():
        code = run(args)
    sys.exit(code)


def run(argv: list[str]) -> int:
    from trainer.cli_args import keys_of, parse_kv
    from trainer.lifecycle import promote as lc
    from trainer.config import PromoteConfig, RegistryConfig

    action, version, flags, rest = split_args(argv)
    keys = {"run.dir": Path, "model": str, "paths.runs_dir": Path, **keys_of("promote", PromoteConfig), **keys_of("registry", RegistryConfig)}
    args = parse_kv(rest, keys, ("model",))
    pcfg = PromoteConfig(**_section(args, "promote", PromoteConfig))
    rcfg = RegistryConfig(**_section(args, "registry", RegistryConfig))
    runs_dir = args.get("paths.runs_dir") or Path(os.environ.get("TRAINER_RUNS_DIR", "runs"))
    model = args["model"]
    if action is None:
        if "run.dir" not in args:
            raise UserError("missing run.dir=PATH: the run to promote (or an action: " + ", ".join(ACTIONS) + ")")
        if version is not None:
            raise UserError(f"unexpected {version!r}: a version number goes with approve, reject or rollback")
        from trainer.cli_args import existing_run_dir

        run_dir = existing_run_dir(str(args["run.dir"]))
        ctx = lc.Context.open(rcfg, runs_dir)
        decision = lc.promote(ctx, run_dir, model, pcfg, evaluator=TrainerEvaluator(), by=flags.get("by"))
        _print_decision(decision)
        return decision.exit_code
    ctx = lc.Context.open(rcfg, runs_dir)
    if action == "status":
        print(json.dumps(lc.status(ctx, model), indent=1))
        return 0
    if action in ("approve", "reject"):
        if version is None:
            raise UserError(f"{action} needs the version: python -m trainer.promote {action} VERSION --by NAME --reason TEXT model={model}")
        decision = lc.approve(ctx, model, version, by=flags.get("by"), reason=flags.get("reason"), accept=action == "approve")
    else:
        decision = lc.rollback(ctx, model, version, by=flags.get("by"), reason=flags.get("reason"))
    _print_decision(decision)
    return decision.exit_code


class TrainerEvaluator:
    """trainer.evaluate's held-out tokens and scoring, and the HF export, for the promotion."""

    def export(self, run_dir: Path) -> tuple[Path, int]:
        from trainer.checkpoint.weights import newest_checkpoint
        from trainer.evaluate import hf_export_for

        step = newest_checkpoint(run_dir).step
        return hf_export_for(run_dir, step), step

    def tokens(self, run_dir: Path, max_tokens: int | None):
        from trainer.evaluate import held_out_tokens

        return held_out_tokens(run_dir, "val", max_tokens)

    def evaluate(self, model_dir: Path, tokens) -> dict:
        from trainer.evaluate import evaluate

        return evaluate(model_dir, tokens)


def split_args(argv: list[str]) -> tuple[str | None, int | None, dict[str, str], list[str]]:
    """(action, version, {by, reason}, key=value arguments)."""
    args = list(argv)
    action = args.pop(0) if args and args[0] in ACTIONS else None
    version = None
    if action and args and "=" not in args[0] and not args[0].startswith("--"):
        try:
            version = int(args.pop(0))
        except ValueError:
            raise UserError(f"{action}: the version must be a number, got {argv[1]!r}") from None
    flags, rest = {}, []
    while args:
        a = args.pop(0)
        if a in ("--by", "--reason"):
            if not args:
                raise UserError(f"{a} needs a value")
            flags[a[2:]] = args.pop(0)
        elif a.startswith(("--by=", "--reason=")):
            k, v = a[2:].split("=", 1)
            flags[k] = v
        elif a.startswith("-"):
            raise UserError(f"unknown option {a!r}; options: --by NAME, --reason TEXT")
        else:
            rest.append(a)
    return action, version, flags, rest


def _section(args: dict, prefix: str, cls) -> dict:
    return {f.name: args[f"{prefix}.{f.name}"] for f in fields(cls) if f"{prefix}.{f.name}" in args}


def _print_decision(d) -> None:
    headline = {"promoted": f"PROMOTED: version {d.version} of {d.model} is the champion",
                "refused": f"REFUSED: version {d.version} of {d.model} stays a candidate; the champion is "
                           f"{d.champion_after if d.champion_after is not None else 'none'}",
                "pending": f"PENDING: version {d.version} of {d.model} waits for approval: python -m trainer.promote approve "
                           f"{d.version} --by NAME --reason TEXT model={d.model}",
                "approved": f"APPROVED: version {d.version} of {d.model} is the champion",
                "rejected": f"REJECTED: version {d.version} of {d.model}",
                "rolled_back": f"ROLLED BACK: the champion of {d.model} is version {d.champion_after} again "
                               f"(was {d.champion_before})"}.get(d.decision, f"{d.decision}: version {d.version} of {d.model}")
    print(headline)
    if d.candidate and d.metric and d.action == "promote":
        cand = d.candidate.get(d.metric)
        champ = (d.champion or {}).get(d.metric)
        print(f"  candidate {d.metric}: {cand:.6f}" + (f" | champion (v{d.champion['version']}) {d.metric}: {champ:.6f}"
                                                       if champ is not None else " | no champion"))
        if d.tokens:
            print(f"  tokens: {d.tokens.get('num_tokens')} ({d.tokens.get('tokens_fingerprint', '')[:12]}), "
                  f"{d.tokens.get('data_path')} {d.tokens.get('split')}")
    print(f"  why: {d.reason}\n  by: {d.by} at {d.time}")


if __name__ == "__main__":
    main()
