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
from pathlib import Path

from trainer.errors import exit_on_user_error


def main(argv: list[str] | None = None) -> None:
    from trainer.cli_args import existing_run_dir, parse_kv
    from trainer.lifecycle.reproduce import NOT_REPRODUCED_EXIT, REPRODUCED_EXIT, reproduce

    with exit_on_user_error():
        args = parse_kv(sys.argv[1:] if argv is None else argv,
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
    print(f"report: {report['reproduction']}/reproduce.json")
    sys.exit(REPRODUCED_EXIT if report["reproduced"] else NOT_REPRODUCED_EXIT)


if __name__ == "__main__":
    main()
