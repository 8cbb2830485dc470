"""W&B model artifacts in a real offline run: name, aliases (best follows the validation loss), files staged for sync."""
from __future__ import annotations

import json
from pathlib import Path

from tests.faults.wandb_file import records
from trainer.tracking.artifacts import log_model_artifact, resumed_run


def test_best_alias_follows_the_lowest_validation_loss(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("logger: {wandb: {_target_: trainer.tracking.loggers.WandbLogger, mode: offline, "
                                      "project: artifacts-test, entity: null}}\n")
    (run / "wandb_id.txt").write_text("abc123\n")
    (run / "eval").mkdir()
    model = tmp_path / "model"
    model.mkdir()
    aliases = []
    with resumed_run(run) as wb:
        assert wb is not None and wb.id == "abc123"
        for step, loss in ((10, 2.0), (20, 2.5), (30, 1.5), (40, None)):
            if loss is not None:
                (run / "eval" / f"s{step}.json").write_text(json.dumps(
                    {"checkpoint_step": step, "split": "val", "own_data": True, "loss": loss}))
            (model / "weights.bin").write_bytes(bytes([step]) * 100)
            aliases.append(log_model_artifact(wb, run, model, kind="export", step=step))
    import wandb

    wandb.teardown()  # the W&B service writes the run file's last block when it stops (at exit, for the CLI)
    assert aliases == [["latest", "step-10", "best"], ["latest", "step-20"], ["latest", "step-30", "best"],
                       ["latest", "step-40"]]
    logged = [r.artifact for f in run.glob("wandb/offline-run-*/*.wandb") for r in records(f)
              if r.WhichOneof("record_type") == "artifact"]
    assert [sorted(a.aliases) for a in logged] == [sorted(a) for a in aliases]
    assert {a.name for a in logged} == {"model-abc123"} and {a.run_id for a in logged} == {"abc123"}
    for a, step in zip(logged, (10, 20, 30, 40)):
        (entry,) = a.manifest.contents
        assert entry.path == "weights.bin" and Path(entry.local_path).read_bytes() == bytes([step]) * 100  # a staged copy
    assert json.loads((run / "wandb_artifacts.json").read_text())[2]["val_loss"] == 1.5
