"""`python -m trainer.report run.dir=PATH`: a run's report: performance (trainer/observability/report.py)
and the data check before training (trainer/lifecycle/data_check.py), when the run has one."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from trainer.errors import exit_on_user_error
from trainer.observability import report as perf_report
from trainer.tracking.run_dir import RunDir


def build_report(run_dir: Path) -> Path:
    from trainer.lifecycle.data_check import report_sections

    return perf_report.build_report(run_dir, sections=report_sections(RunDir(run_dir).data_check))


def main(argv: Optional[list[str]] = None) -> None:
    with exit_on_user_error():
        index = build_report(perf_report.parse_args(sys.argv[1:] if argv is None else argv))
        print(f"report: {index}")


if __name__ == "__main__":
    main()
