"""Reproduce a run and say whether it reproduced.

    python -m trainer.reproduce run.dir=PATH [out.dir=NEW_RUN_DIR] [atol=1e-3] [eval_max_tokens=65536]

Names every difference between this environment and the run's manifest (git sha and dirty flag,
packages, Python, torch/CUDA, CPU count, data fingerprint), re-runs the frozen config.yaml into a
new run dir (default: PATH-repro-<time>), compares the final weights (bitwise on CPU, within atol
on GPU) and the evaluation on the same held-out tokens, and prints a verdict. The report is
NEW_RUN_DIR/reproduce.json. Exit codes: 0 reproduced, 3 not reproduced, 2 bad input.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from trainer.errors import UserError, exit_on_user_error
from trainer.files import atomic_write_json
from trainer.tracking.run_dir import RunDir


def main(argv: list[str] | None = None) -> None:
    from trainer.cli_args import existing_run_dir, exit_with_usage_if_asked, parse_kv

    argv = sys.argv[1:] if argv is None else argv
    exit_with_usage_if_asked(argv, __doc__)
    from trainer.lifecycle.reproduce import NOT_REPRODUCED_EXIT, REPRODUCED_EXIT

    with exit_on_user_error():
        args = parse_kv(argv,
                        {"run.dir": existing_run_dir, "out.dir": Path, "atol": float, "eval_max_tokens": int}, ("run.dir",))
        report = reproduce(args["run.dir"], args.get("out.dir"), atol=args.get("atol", 1e-3),
                           eval_max_tokens=args.get("eval_max_tokens", 65536))
    diffs = report["environment_differences"]
    print(f"\nreproduce {report['original']}\n       -> {report['reproduction']}")
    print(f"environment: {len(diffs)} difference(s) from the manifest" + (":" if diffs else ""))
    for d in diffs:
        print(f"  {d['what']}: recorded {d['recorded']!r}, now {d['now']!r}")
    m = report["metrics"]
    print(f"final losses (train, val): {m['final_train_loss']} / {m['final_val_loss']}")
    print(f"eval on {m['eval']['tokens']} held-out tokens ({m['eval']['tokens_fingerprint'][:12]}): loss {m['eval']['loss']}")
    print(report["verdict"])
    print(f"report: {RunDir(Path(report['reproduction'])).reproduction}")
    sys.exit(REPRODUCED_EXIT if report["reproduced"] else NOT_REPRODUCED_EXIT)


def reproduce(run_dir: Path, new_dir: Path | None = None, *, atol: float = 1e-3, eval_max_tokens: int | None = 65536) -> dict[str, Any]:
    from trainer.checkpoint.weights import newest_checkpoint
    from trainer.lifecycle.reproduce import (compare_weights, environment_differences, on_gpu_run, read_manifest,
                                             summary_losses, verdict)

    run_dir = Path(run_dir).absolute()
    newest_checkpoint(run_dir)  # a run without a valid checkpoint has nothing to compare: fail before training
    read_manifest(run_dir)
    new_dir = Path(new_dir).absolute() if new_dir else run_dir.with_name(f"{run_dir.name}-repro-{time.strftime('%Y%m%d-%H%M%S')}")
    if RunDir(new_dir).checkpoints.exists():
        raise UserError(f"{new_dir} already holds checkpoints: give the reproduction a fresh out.dir=PATH")
    diffs = environment_differences(run_dir)
    started = time.time()
    code = rerun(run_dir, new_dir)
    if code != 0:
        raise UserError(f"the re-run in {new_dir} ended with exit code {code} (preempted?): run reproduce again with out.dir={new_dir}")
    weights = compare_weights(run_dir, new_dir)
    metrics = {**summary_losses(run_dir, new_dir), "eval": evaluate_both(run_dir, new_dir, eval_max_tokens)}
    ok, text = verdict(weights, metrics, on_gpu_run(run_dir), atol)
    report = {"original": str(run_dir), "reproduction": str(new_dir), "reproduced": ok, "verdict": text,
              "environment_differences": diffs, "weights": weights, "metrics": metrics,
              "tolerance": {"cpu": "bitwise", "gpu_atol": atol}, "rerun_seconds": round(time.time() - started, 1)}
    atomic_write_json(RunDir(new_dir).reproduction, report)
    return report


def rerun(run_dir: Path, new_dir: Path) -> int:
    """Train the frozen config again into new_dir, in this process, as `python -m trainer.train` starts a run."""
    from omegaconf import open_dict

    from trainer.tracking.run_dir import load_frozen
    from trainer.train import start_run

    cfg = load_frozen(RunDir(run_dir).config)
    with open_dict(cfg):
        cfg.run.dir, cfg.run.id = str(new_dir), new_dir.name
        cfg.run.stop_after_steps = None  # the run as it ended, not the interruption drill that may have made it
    code, _ = start_run(cfg, [f"reproduce of {run_dir}", f"run.dir={new_dir}"])  # (exit code, run dir)
    return code


def evaluate_both(a_dir: Path, b_dir: Path, max_tokens: int | None) -> dict[str, Any]:
    """Both runs evaluated on the original's held-out tokens."""
    from trainer.evaluate import evaluate, held_out_tokens

    tokens = held_out_tokens(a_dir, "val", max_tokens)
    ea, eb = evaluate(a_dir, tokens), evaluate(b_dir, tokens)
    return {"tokens_fingerprint": tokens.fingerprint, "tokens": len(tokens.ids),
            "loss": [ea["loss"], eb["loss"]], "bits_per_byte": [ea["bits_per_byte"], eb["bits_per_byte"]]}


if __name__ == "__main__":
    main()
