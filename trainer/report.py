"""`python -m trainer.report run.dir=PATH`: a run's performance report (trainer/observability/report.py)."""
from trainer.observability.report import build_report, main

__all__ = ["build_report", "main"]

if __name__ == "__main__":
    main()
