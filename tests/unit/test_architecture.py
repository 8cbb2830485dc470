"""The layer contract and the single owners of run-dir names and durable writes."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Top-level names of a run directory: only trainer/tracking/run_dir.py (RunDir) spells them.
RUN_DIR_NAMES = {"config.yaml", "manifest.json", "model.json", "checkpoints", "perf", "logs", "csv", "metrics.csv",
                 "wandb", "wandb_id.txt", "profiler", "report", "export", "eval", "tokenizer", "deepspeed_config.json",
                 "wandb_artifacts.json", "data_check",
                 "promotion.json", "pipeline.json", "reproduce.json", "drift", "lock.json"}
# File names no other concept shares: flagged wherever they appear. The other names are also config keys
# or package names ("wandb", "csv", "profiler", "tokenizer"): flagged when joined onto a path (`p / "perf"`).
FILE_NAMES = {n for n in RUN_DIR_NAMES if "." in n} | {"checkpoints"}
ALLOWED = {
    "trainer/tracking/run_dir.py": RUN_DIR_NAMES,
    "trainer/checkpoint/store.py": {"manifest.json"},  # a checkpoint directory's integrity manifest
}


def test_import_layers_contract_is_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("import-linter is not installed: it is part of the [dev] extra (scripts/test.sh installs it)")
    out = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " 0 broken" in out.stdout


def _run_dir_literals(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    constants = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                 and id(n) not in docstrings}
    joined = {n.right.value for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)
              and isinstance(n.right, ast.Constant) and isinstance(n.right.value, str)}
    return (constants & FILE_NAMES) | (joined & RUN_DIR_NAMES)


def test_run_dir_names_are_spelled_only_by_the_run_dir_type():
    offenders = {}
    for path in sorted((ROOT / "trainer").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        found = _run_dir_literals(path) - ALLOWED.get(rel, set())
        if found:
            offenders[rel] = sorted(found)
    assert not offenders, f"use trainer.tracking.run_dir.RunDir instead of these literals: {offenders}"


def test_durable_writes_go_through_the_one_helper():
    """os.fsync appears only in trainer/files.py (and the token writer, which streams a large array)."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "trainer").rglob("*.py")
                 if "os.fsync(" in p.read_text() and p.name not in ("files.py", "shards.py")]
    assert not offenders, f"write through trainer.files.atomic_write_*: {offenders}"
