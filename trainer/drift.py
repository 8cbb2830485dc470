"""Has new data drifted from what a model was trained on?

    python -m trainer.drift reference=RUN_DIR_OR_DATA current=DATA [out=DIR] [drift.KEY=VALUE ...]
                            [file_glob=GLOB] [text_field=FIELD]

reference: a run dir (its training corpus, tokenized by its own tokenizer) or a file/directory of text
(tokenized as bytes). current: a file/directory of text (file_glob/text_field select from it, and from a
data reference). Writes DIR/drift.json and DIR/drift.html (default DIR: <run dir>/drift/<time> for a run
dir reference, else $TRAINER_RUNS_DIR (default runs)/drift_checks/<time>) and prints one line per measurement.

Exit codes (for cron and CI): 0 no drift, 3 drifted (a judged measurement above its threshold), 2 bad input.
Thresholds (Evidently-like): drift.psi_threshold=0.1, drift.js_threshold=0.1, drift.byte_fallback_threshold=0.1,
drift.new_vocab_threshold=0.1, drift.psi_bins=10, drift.min_documents=500.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

from trainer.errors import UserError, exit_on_user_error
from trainer.files import atomic_write_text
from trainer.tracking.run_dir import RunDir

DRIFTED_EXIT = 3


def main(argv: list[str] | None = None) -> None:
    from trainer.cli_args import exit_with_usage_if_asked

    args = sys.argv[1:] if argv is None else argv
    exit_with_usage_if_asked(args, __doc__)
    with exit_on_user_error():
        report = run(args)
    sys.exit(DRIFTED_EXIT if report["drifted"] else 0)


def run(argv: list[str]) -> dict:
    from trainer.cli_args import keys_of, parse_kv
    from trainer.lifecycle import require
    from trainer.config import DriftConfig, check_drift_config

    require("scipy", "python -m trainer.drift")
    from trainer.lifecycle.drift import html_page, measure, summary_lines

    keys = {"reference": str, "current": str, "out": Path, "file_glob": str, "text_field": str, **keys_of("drift", DriftConfig)}
    args = parse_kv(argv, keys, ("reference", "current"))
    cfg = DriftConfig(**{f.name: args[f"drift.{f.name}"] for f in fields(DriftConfig) if f"drift.{f.name}" in args})
    check_drift_config(cfg)
    ref_texts, tokenizer, ref_run, glob, field = load_reference(args["reference"], args.get("file_glob"), args.get("text_field"))
    cur_texts = load_texts(args["current"], glob, field, "current")
    report = measure(ref_texts, cur_texts, tokenizer, cfg)
    report["reference"], report["current"] = args["reference"], args["current"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.get("out") or ((RunDir(ref_run).drift / stamp) if ref_run else
                              Path(os.environ.get("TRAINER_RUNS_DIR", "runs")) / "drift_checks" / stamp)
    out = out.expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "drift.json", json.dumps(report, indent=1))
    atomic_write_text(out / "drift.html", html_page(report))
    print(f"drift: {'DRIFTED' if report['drifted'] else 'no drift'} ({report['reference_documents']} reference, "
          f"{report['current_documents']} current documents, {report['tokenizer']} tokens)")
    for line in summary_lines(report):
        print(f"  {line}")
    print(f"report: {out / 'drift.json'}\n        {out / 'drift.html'}")
    return report


def load_reference(spec: str, file_glob: str | None, text_field: str | None):
    """(documents, tokenizer, run dir or None, file_glob, text_field) of a run dir or a data path."""
    from trainer.data.tokenizer import ByteTokenizer

    path = Path(spec).expanduser()
    if RunDir(path).is_run_dir():
        from omegaconf import OmegaConf

        from trainer.lifecycle.corpus import module_documents, open_data_module
        from trainer.tracking.run_dir import load_frozen

        data = OmegaConf.to_container(load_frozen(RunDir(path).config).data, resolve=True)
        dm = open_data_module(data)  # the run's tokenizer (its shards are rebuilt if the cache was cleared)
        docs = module_documents(dm)
        if docs.skipped:
            raise UserError(f"reference={spec}: its data is streamed ({'; '.join(docs.skipped)}); give the reference as data")
        return docs.texts, dm.tokenizer, path.absolute(), file_glob or data.get("file_glob"), text_field or data.get("text_field", "text")
    return load_texts(spec, file_glob, text_field or "text", "reference"), ByteTokenizer(), None, file_glob, text_field or "text"


def load_texts(spec: str, file_glob: str | None, text_field: str, which: str) -> list[str]:
    from trainer.lifecycle.corpus import read_documents

    try:
        texts = read_documents(spec, file_glob, text_field).texts
    except UserError as e:
        raise UserError(f"{which}={spec}: {e}") from None
    if not texts:
        raise UserError(f"{which}={spec} has no documents")
    return texts


if __name__ == "__main__":
    main()
