"""The retrain pipeline: data check -> train (or resume) -> evaluate -> export -> promote.

    python -m trainer.pipeline [pipeline=retrain|retrain_on_drift] [pipeline.KEY=VALUE ...]
                               [any training override: experiment=..., data=..., trainer.max_steps=...]
                               [promote.KEY=VALUE ...] [registry.KEY=VALUE ...]

Composes the training config (so every override of `python -m trainer.train` applies) with the
`pipeline` group. The run dir is <paths.runs_dir>/<run.name>/<pipeline.name>-<hash of the config and
the data fingerprint> unless run.dir/run.id name it. Each step runs as its own process and is
skipped when <run_dir>/pipeline.json records it done with the same inputs and its outputs are there.
With pipeline.trigger=drift it first compares the training data with pipeline.drift_reference and
does nothing when it has not drifted.

Exit codes: 0 done (promoted, or nothing to do), 3 the data check failed or promotion was refused,
4 the new version waits for approval, 124 preempted (re-run to resume): SIGTERM or SIGUSR1 sent to this
process is passed on to the running step (SIGUSR1 only to training, which checkpoints at its next step
boundary and exits 124; SIGTERM to any step, and no further step starts), 2 bad input, another code: that step's.
"""
from __future__ import annotations

import sys
from pathlib import Path

from trainer.errors import exit_on_user_error
from trainer.tracking.run_dir import RunDir


def main(argv: list[str] | None = None) -> None:
    from trainer.cli_args import exit_with_usage_if_asked

    args = sys.argv[1:] if argv is None else argv
    exit_with_usage_if_asked(args, __doc__)
    with exit_on_user_error():
        code = run(args)
    sys.exit(code)


def run(argv: list[str]) -> int:
    from trainer.config import compose_config
    from trainer.lifecycle.pipeline import drift_gate, pipeline_overrides, run_id_for, run_pipeline

    train_args, own = pipeline_overrides(argv)
    if not any(a.split("=", 1)[0] == "pipeline" for a in own):
        own = ["pipeline=retrain", *own]
    cfg = compose_config([*train_args, *own])
    if cfg.pipeline.trigger == "drift" and not drift_gate(cfg):
        print("pipeline: the data has not drifted: nothing to do")
        return 0
    fingerprint = _data_fingerprint(cfg)
    if cfg.run.dir:
        run_dir = Path(cfg.run.dir).expanduser().absolute()
    else:
        run_dir = Path(cfg.paths.runs_dir).expanduser().absolute() / cfg.run.name / (cfg.run.id or run_id_for(cfg, fingerprint))
    print(f"pipeline {cfg.pipeline.name}: run dir {run_dir}")
    code = run_pipeline(cfg, [a for a in train_args if not a.startswith(("run.dir=", "run.id="))], run_dir, fingerprint)
    promotion = RunDir(run_dir).promotion
    if promotion.is_file() and "promote" in cfg.pipeline.steps:
        import json

        d = json.loads(promotion.read_text())
        print(f"pipeline: {d['decision']} version {d['version']} of {d['model']} ({d['reason']})")
    print(f"pipeline: exit {code}; state in {RunDir(run_dir).pipeline_state}")
    return code


def _data_fingerprint(cfg) -> str | None:
    """The data's fingerprint (building its token shards once, which training reuses)."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    if not hasattr(dm, "prepare_data"):
        return None
    dm.prepare_data()
    return getattr(dm, "fingerprint", None)


if __name__ == "__main__":
    main()
