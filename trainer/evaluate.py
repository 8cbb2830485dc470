"""Evaluate a model on fixed, fingerprinted held-out tokens: loss, perplexity and bits per byte.

    python -m trainer.evaluate run.dir=PATH [split=val] [max_tokens=N] [name=NAME] [batch_size=8]
                               [checkpoint=DIR] [data=OPTION] [data.KEY=VALUE ...]
                               [tasks=[t1,t2]] [task_dir=DIR] [limit=N]

The tokens are the whole `split` of the run's data (or of `data=`/`data.*=` overrides: another
dataset, same tokenizer), or its first `max_tokens`. They are cut into consecutive windows of the
model's context, so every token after the first is predicted exactly once, in a fixed order: the
same model and tokens give the same numbers. Loss is the mean negative log-likelihood in nats
over the predicted tokens (logits over the tokenizer's real vocabulary, padding rows excluded),
perplexity its exponential, bits per byte the summed loss / ln 2 / the UTF-8 bytes those tokens
stand for (special tokens count 0 bytes). The result goes to `<run_dir>/eval/<name>.json` (name
default: the split) and to the run's W&B summary as `eval/<name>/<metric>`, on the training
run's W&B id. `tasks=[...]` also runs lm-evaluation-harness tasks in-process on the run's HF
export (made if missing; needs the `eval` extra); `task_dir` adds a directory of task YAMLs.

Python API (the lifecycle's promotion compares a candidate and a champion on the same tokens):

    tokens = held_out_tokens(run_dir, split="val", max_tokens=None, data_overrides=())  # EvalTokens
    result = evaluate(model_source, tokens, batch_size=8)                              # dict

`model_source` is a run dir (its newest valid checkpoint) or a Hugging Face model directory
(an `export format=hf` output, e.g. a registry's champion), or a `load_model(...)` result.
`EvalTokens` carries the ids and their identity: `fingerprint` (sha256 of the ids), the count,
the byte count, the tokenizer identity and where they came from. `evaluate` refuses a model whose
tokenizer differs from the one that made the tokens. Result keys: loss, perplexity,
bits_per_byte, tokens, bytes, tokens_fingerprint, tokenizer, checkpoint_step, model, seq_len, data.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from trainer.errors import UserError, closest, exit_on_user_error
from trainer.files import atomic_write_json
from trainer.tracking.run_dir import RunDir, load_frozen


# --------------------------------------------------------------------------- the tokens
@dataclass(frozen=True)
class EvalTokens:
    """A fixed held-out token sequence and what identifies it."""

    ids: np.ndarray  # (N,) token ids, any unsigned dtype (a memory map of the shard is fine)
    fingerprint: str  # sha256 of the ids as little-endian uint32
    num_bytes: int  # UTF-8 bytes that ids[1:] (the predicted tokens) stand for
    tokenizer: str  # vocabulary identity (trainer.export.hf_tokenizer.vocab_identity)
    vocab_size: int  # the tokenizer's vocabulary
    source: dict = field(default_factory=dict)  # data path, data fingerprint, split, max_tokens

    def describe(self) -> dict:
        return {"tokens_fingerprint": self.fingerprint, "num_tokens": int(len(self.ids)), "bytes": self.num_bytes,
                "tokenizer": self.tokenizer, **self.source}


def held_out_tokens(run_dir: Path, split: str = "val", max_tokens: int | None = None,
                    data_overrides: Sequence[str] = ()) -> EvalTokens:
    """The held-out tokens of a run's data (or of its data config changed by `data=`/`data.*=` overrides)."""
    from hydra.utils import instantiate

    data_cfg = eval_data_config(Path(run_dir), data_overrides)
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    return tokens_of(datamodule, split, max_tokens)


def tokens_of(datamodule, split: str, max_tokens: int | None = None) -> EvalTokens:
    """EvalTokens from a prepared token data module's split (a mixture's sources one after another)."""
    from trainer.export import hf_tokenizer

    shard_sets = getattr(datamodule, "shard_sets", None)
    if not shard_sets:
        raise UserError(f"{type(datamodule).__name__} holds no token shards to evaluate on (data._target_ must be a "
                        "token data module such as trainer.data.TokenDataModule)")
    splits = sorted(k.removesuffix("_tokens") for k in shard_sets[0].meta if k.endswith("_tokens"))
    if split not in splits:
        raise UserError(f"split={split!r} is not a split of this data.{closest(split, splits)} Splits: {', '.join(splits)}.")
    parts = [s.tokens(split) for s in shard_sets]
    ids = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if max_tokens is not None:
        if max_tokens < 2:
            raise UserError(f"max_tokens={max_tokens}: evaluating needs at least 2 tokens (one to predict)")
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise UserError(f"the {split} split has {len(ids)} tokens: nothing to predict")
    tok = hf_tokenizer.as_transformers(datamodule.tokenizer)
    return EvalTokens(
        ids=ids, fingerprint=fingerprint_ids(ids), num_bytes=count_bytes(tok, ids[1:]),
        tokenizer=hf_tokenizer.vocab_identity(tok), vocab_size=len(tok),
        source={"data_path": str(getattr(datamodule, "path", "")), "data_fingerprint": datamodule.fingerprint,
                "split": split, "max_tokens": max_tokens},
    )


def fingerprint_ids(ids: np.ndarray, chunk: int = 1 << 22) -> str:
    import hashlib

    h = hashlib.sha256()
    for start in range(0, len(ids), chunk):
        h.update(np.ascontiguousarray(ids[start : start + chunk], dtype="<u4").tobytes())
    return h.hexdigest()


def count_bytes(tok, ids: np.ndarray, chunk: int = 1 << 16) -> int:
    """UTF-8 bytes the ids stand for (special tokens: 0). Exact for byte-level tokenizers (a table per id);
    others are decoded (decoded_byte_count)."""
    from trainer.export.hf_tokenizer import token_byte_lengths

    lengths = token_byte_lengths(tok)
    if lengths is None:
        return decoded_byte_count(tok, ids, chunk)
    return int(sum(int(lengths[np.asarray(ids[s : s + chunk], dtype=np.int64)].sum()) for s in range(0, len(ids), chunk)))


def decoded_byte_count(tok, ids: np.ndarray, chunk: int = 1 << 16) -> int:
    """UTF-8 bytes of the decoded text, `chunk` ids at a time (a character split by a chunk boundary may be miscounted)."""
    return sum(len(tok.decode(np.asarray(ids[s : s + chunk]).tolist(), skip_special_tokens=True).encode("utf-8"))
               for s in range(0, len(ids), chunk))


def eval_data_config(run_dir: Path, overrides: Sequence[str] = ()):
    """The run's frozen data config, or with `data=OPTION` the configs/data/ option composed as training
    would, with `data.KEY=VALUE` overrides applied; interpolations (${seed}, ${model.seq_len},
    ${paths.cache_dir}) resolve against the run's frozen config."""
    from omegaconf import OmegaConf, open_dict

    from trainer.config import check_target, compose_config
    cfg = load_frozen(RunDir(run_dir).config)
    if any(o.split("=", 1)[0] == "data" for o in overrides):
        composed = compose_config(list(overrides))  # the Hydra defaults of the option, and clear errors
        with open_dict(cfg):
            cfg.data = OmegaConf.create(OmegaConf.to_container(composed.data, resolve=False))
    else:
        try:
            with open_dict(cfg):
                cfg.merge_with_dotlist(list(overrides))
        except Exception as e:  # noqa: BLE001 - OmegaConf's many error types all mean a bad override
            raise UserError(f"cannot apply {list(overrides)} to the run's data config: {str(e).splitlines()[0]}") from None
    try:
        data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=True))
    except Exception as e:  # noqa: BLE001 - a missing value (???) or a broken interpolation
        raise UserError(f"the data config for evaluation is incomplete: {str(e).splitlines()[0]} "
                        "(give it as data.KEY=VALUE)") from None
    check_target("data", data)
    return data


# --------------------------------------------------------------------------- the model
@dataclass
class EvalModel:
    """A causal LM ready to score tokens."""

    logits: Callable  # (B, T) long tensor on `device` -> (B, T, >= vocab_size) logits
    seq_len: int
    vocab_size: int  # true vocabulary: logits beyond it (embedding padding) are not scored
    tokenizer: str  # tokenizer identity
    step: int | None
    source: str
    device: str


def load_model(source: Path | str, checkpoint: Path | None = None, device: str | None = None) -> EvalModel:
    """A run dir (newest valid checkpoint, or `checkpoint`) or a Hugging Face model directory."""
    import torch

    from trainer.export import hf_tokenizer

    source = Path(source).expanduser().absolute()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if RunDir(source).is_run_dir():
        from trainer.checkpoint.weights import load_trained_net

        net, info = load_trained_net(source, checkpoint)
        if not hasattr(net, "cfg") or not hasattr(net.cfg, "seq_len"):
            raise UserError(f"the run in {source} did not train a language model ({type(net).__name__})")
        tok = hf_tokenizer.run_tokenizer(source)
        net = net.to(device)
        return EvalModel(logits=net, seq_len=net.cfg.seq_len, vocab_size=net.cfg.vocab_size,
                         tokenizer=hf_tokenizer.vocab_identity(tok), step=info.step, source=str(info.path), device=device)
    if (source / "config.json").is_file():
        from transformers import AutoModelForCausalLM

        from trainer.export.hf import PROVENANCE

        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32).to(device).eval()
        tok = hf_tokenizer.load_dir(source)
        provenance = json.loads((source / PROVENANCE).read_text()) if (source / PROVENANCE).is_file() else {}
        return EvalModel(logits=lambda ids: model(input_ids=ids).logits,
                         seq_len=int(getattr(model.config, "max_position_embeddings", 1024)),
                         vocab_size=int(model.config.vocab_size), tokenizer=hf_tokenizer.vocab_identity(tok),
                         step=provenance.get("step"), source=str(source), device=device)
    raise UserError(f"{source} is neither a run dir (config.yaml) nor a Hugging Face model directory (config.json)")


# --------------------------------------------------------------------------- scoring
def evaluate(model_source: Path | str | EvalModel, tokens: EvalTokens, batch_size: int = 8,
             progress: bool = False) -> dict[str, Any]:
    """Loss, perplexity and bits per byte of the model on the tokens (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    model = model_source if isinstance(model_source, EvalModel) else load_model(model_source)
    if model.tokenizer != tokens.tokenizer:
        raise UserError(
            f"the tokens were made by another tokenizer (identity {tokens.tokenizer}, {tokens.vocab_size} tokens) than "
            f"the model's (identity {model.tokenizer}, {model.vocab_size} tokens, {model.source}): the ids would mean "
            "different text. Tokenize the data with the model's tokenizer (data.tokenizer=...)."
        )
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size} must be at least 1")
    L, V, ids = model.seq_len, model.vocab_size, tokens.ids
    starts = list(range(0, len(ids) - 1, L))
    full = [s for s in starts if s + L + 1 <= len(ids)]
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    batches += [[s] for s in starts if s + L + 1 > len(ids)]  # the shorter last window, alone
    total = len(ids) - 1
    nll, counted = 0.0, 0
    t0 = time.perf_counter()
    with _progress(progress, total, tokens.source.get("split", "eval")) as advance, torch.no_grad():
        for batch in batches:
            n = min(L, len(ids) - 1 - batch[0])
            window = np.stack([np.asarray(ids[s : s + n + 1], dtype=np.int64) for s in batch])
            window = torch.from_numpy(window).to(model.device)
            logits = model.logits(window[:, :-1])[..., :V].float()
            nll += float(F.cross_entropy(logits.reshape(-1, V), window[:, 1:].reshape(-1), reduction="sum").double())
            counted += window[:, 1:].numel()
            advance(window[:, 1:].numel())
    assert counted == total, (counted, total)
    loss = nll / counted
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else float("inf"),
        "bits_per_byte": nll / math.log(2) / tokens.num_bytes if tokens.num_bytes else None,
        "tokens": counted,
        "bytes": tokens.num_bytes,
        "tokens_fingerprint": tokens.fingerprint,
        "tokenizer": tokens.tokenizer,
        "checkpoint_step": model.step,
        "model": model.source,
        "seq_len": L,
        "data": tokens.describe(),
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }


@contextlib.contextmanager
def _progress(enabled: bool, total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A progress bar over the predicted tokens on stderr (tokens/s, time left); yields advance(n)."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    t0 = time.perf_counter()
    with Progress(TextColumn(f"eval {label}"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens {task.fields[rate]}"),
                  TimeRemainingColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task("eval", total=total, rate="")

        def advance(n: int) -> None:
            done = bar.tasks[0].completed + n
            bar.update(task, advance=n, rate=f"{done / max(time.perf_counter() - t0, 1e-9):,.0f} tok/s")

        yield advance


# --------------------------------------------------------------------------- lm-evaluation-harness
def run_tasks(hf_dir: Path, tasks: Sequence[str], task_dir: Path | None = None, limit: int | None = None,
              batch_size: int = 8, device: str | None = None) -> dict[str, dict[str, float]]:
    """lm-evaluation-harness tasks on a Hugging Face model directory, in this process: {task: {metric: value}}."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("tasks=... runs lm-evaluation-harness, which is not installed: pip install -e '.[eval]'") from None
    import torch

    manager = TaskManager(include_path=str(task_dir), include_defaults=False) if task_dir else None
    if manager is None or any(t not in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=str(task_dir) if task_dir else None)  # with the built-in tasks
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"unknown lm-eval task {unknown[0]!r}.{closest(unknown[0], manager.all_tasks)} "
                        "Give task_dir=DIR for your own task YAMLs.")
    model_args: dict[str, Any] = {"pretrained": str(hf_dir), "dtype": "float32"}
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    if config.get("bos_token_id") is None and config.get("eos_token_id") is None:
        # lm-eval scores an empty context after a BOS/EOS token; a tokenizer with neither (bytes) gets id 0
        # (NUL), which only such contexts see.
        model_args["prefix_token_id"] = 0
    out = simple_evaluate(model="hf", model_args=model_args, tasks=list(tasks),
                          task_manager=manager, limit=limit, batch_size=batch_size, log_samples=False,
                          device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return {task: {k: float(v) for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for task, res in out["results"].items()}


def hf_export_for(run_dir: Path, step: int) -> Path:
    """The run's HF export of the checkpoint of `step`: reused when its provenance names that very checkpoint
    (manifest hash), else made (without W&B)."""
    import hashlib

    from trainer.checkpoint.store import MANIFEST, step_dir_name
    from trainer.export import HF_SUBDIR, export
    from trainer.export.hf import PROVENANCE

    ckpt = RunDir(run_dir).checkpoints / step_dir_name(step)
    hf_dir = RunDir(run_dir).export / HF_SUBDIR
    if (hf_dir / PROVENANCE).is_file() and (ckpt / MANIFEST).is_file():
        made_from = json.loads((hf_dir / PROVENANCE).read_text()).get("checkpoint_manifest_sha256")
        if made_from == hashlib.sha256((ckpt / MANIFEST).read_bytes()).hexdigest():
            return hf_dir
    return export(run_dir, checkpoint=ckpt, format="hf", wandb=False)


# --------------------------------------------------------------------------- the command
def run(run_dir: Path, *, split: str = "val", max_tokens: int | None = None, name: str | None = None,
        batch_size: int = 8, checkpoint: Path | None = None, data_overrides: Sequence[str] = (),
        tasks: Sequence[str] = (), task_dir: Path | None = None, limit: int | None = None,
        progress: bool = True) -> dict[str, Any]:
    """What `python -m trainer.evaluate` does: evaluate, write <run_dir>/eval/<name>.json, update W&B."""
    from trainer.tracking.artifacts import log_summary

    name = name or (split if not data_overrides else f"{split}-other")
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"name={name!r} may only hold letters, digits, '.', '_' and '-' (it names a file)")
    tokens = held_out_tokens(run_dir, split, max_tokens, data_overrides)
    model = load_model(run_dir, checkpoint)
    result = {"name": name, "split": split, "own_data": not data_overrides,
              **evaluate(model, tokens, batch_size=batch_size, progress=progress)}
    if tasks:
        result["tasks"] = run_tasks(hf_export_for(run_dir, model.step), tasks, task_dir, limit, batch_size)
    out = RunDir(run_dir).eval / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    atomic_write_json(out, result)
    summary = {f"eval/{name}/{k}": result[k] for k in ("loss", "perplexity", "bits_per_byte", "tokens", "checkpoint_step")}
    for task, metrics in result.get("tasks", {}).items():
        summary |= {f"eval/{name}/{task}/{m}": v for m, v in metrics.items()}
    result["wandb"] = log_summary(run_dir, summary)
    return result


def main(argv: list[str] | None = None) -> None:
    from trainer.cli_args import existing_run_dir, parse_kv

    argv = sys.argv[1:] if argv is None else argv
    with exit_on_user_error():
        data_overrides = [a for a in argv if a.split("=", 1)[0] == "data" or a.startswith("data.")]
        args = parse_kv([a for a in argv if a not in data_overrides],
                        {"run.dir": existing_run_dir, "split": str, "max_tokens": int, "name": str, "batch_size": int,
                         "checkpoint": Path, "tasks": _name_list, "task_dir": Path, "limit": int}, ("run.dir",))
        run_dir = args.pop("run.dir")
        result = run(run_dir, data_overrides=data_overrides, **args)
        bpb = f"{result['bits_per_byte']:.4f}" if result["bits_per_byte"] is not None else "n/a"
        print(f"eval {result['name']}: loss {result['loss']:.4f} nats | perplexity {result['perplexity']:.3f} | "
              f"bits/byte {bpb} | {result['tokens']:,} tokens ({result['bytes']:,} bytes) | step {result['checkpoint_step']} | "
              f"tokens {result['tokens_fingerprint'][:12]}")
        for task, metrics in result.get("tasks", {}).items():
            print(f"task {task}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
        print(f"wrote {RunDir(run_dir).eval / (result['name'] + '.json')}")


def _name_list(value: str) -> list[str]:
    items = [v.strip().strip("'\"") for v in value.strip().removeprefix("[").removesuffix("]").split(",")]
    if not all(items):
        raise ValueError(value)
    return items


_name_list.__name__ = "list of names, e.g. [hellaswag,arc_easy]"

if __name__ == "__main__":
    main()
