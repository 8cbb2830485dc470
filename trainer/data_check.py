"""Check a corpus before training on it.

    python -m trainer.data_check [data=text data.path=FILE_OR_DIR] [data.quality.KEY=VALUE ...] [out=DIR]

Composes the same config as `python -m trainer.train` (so `data=...`, `experiment=...` and any
override apply), writes DIR/report.json and DIR/report.html (default DIR:
<paths.runs_dir>/data_check/<data fingerprint>/) and, with W&B on (logger.wandb), a W&B table in
a `data-check` run. Exit codes: 0 every check passed, 3 a check failed, 2 bad input.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from trainer.errors import UserError, exit_on_user_error

CHECK_FAILED_EXIT = 3


def main(argv: list[str] | None = None) -> None:
    from trainer.cli_args import exit_with_usage_if_asked

    args = sys.argv[1:] if argv is None else argv
    exit_with_usage_if_asked(args, __doc__)
    with exit_on_user_error():
        code = run(args)
    sys.exit(code)


def run(args: list[str]) -> int:
    from omegaconf import OmegaConf

    from trainer.config import compose_config
    from trainer.config import quality_of
    from trainer.lifecycle.data_check import cached_checks, failure_lines, summary_line, write_report

    out = [a.split("=", 1)[1] for a in args if a.startswith("out=")]
    cfg = compose_config([a for a in args if not a.startswith("out=")])
    q = quality_of(cfg.data)
    if q is None:
        raise UserError(f"data._target_={cfg.data._target_}: the data check reads text corpora (data=stdlib or "
                        "data=text data.path=...)")
    data = OmegaConf.to_container(cfg.data, resolve=True)
    report, _ = cached_checks(data, q)
    # Not a run: its reports go beside the runs, one folder per corpus (fingerprint).
    out_dir = Path(out[-1]) if out else Path(cfg.paths.runs_dir) / "data_checks" / report["data_fingerprint"]
    json_path, html_path = write_report(report, out_dir.expanduser().absolute())
    print(f"data check: {'passed' if report['passed'] else 'FAILED'}: {summary_line(report)}")
    for line in failure_lines(report):
        print(f"  {line}")
    print(f"report: {json_path}\n        {html_path}")
    _log_to_wandb(cfg, report, out_dir)
    return 0 if report["passed"] else CHECK_FAILED_EXIT


def _log_to_wandb(cfg, report: dict, out_dir: Path) -> None:
    from trainer.tracking.loggers import DEFAULT_PROJECT, resolve_wandb_mode

    node = (cfg.get("logger") or {}).get("wandb")  # the run's W&B logger entry (configs/logger/wandb.yaml)
    if not node:
        return
    mode = resolve_wandb_mode(node.get("mode") or "auto")
    if mode == "disabled":
        return
    try:
        import wandb

        from trainer.lifecycle.data_check import wandb_table

        run = wandb.init(project=node.get("project") or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                         entity=node.get("entity"), job_type="data-check", mode=mode,
                         dir=str(out_dir), name=f"data-check/{report['data_fingerprint']}",
                         config={"data": report["source"], "thresholds": report["thresholds"]},
                         settings=wandb.Settings(console="off", save_code=False, disable_git=True, silent=True))
        run.log({"data_check": wandb_table(report)})
        run.summary.update({"data_check/passed": report["passed"]})
        run.finish()
    except Exception as e:  # noqa: BLE001 - the report is on disk; W&B is a copy
        print(f"warning: could not log the data check to W&B ({e})", file=sys.stderr)


if __name__ == "__main__":
    main()
