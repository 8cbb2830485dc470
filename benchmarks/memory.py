"""Per-rank memory of parameters, gradients and optimizer state: DDP and ZeRO 1/2/3, 2 ranks.

    python benchmarks/memory.py [--d-model 640 --layers 11]      # starts 2 ranks per strategy

Each strategy runs under torchrun (2 gloo ranks on CPU, fp32, AdamW) on a GPT of >= 50M
parameters: gradients measured between backward and the optimizer step, the optimizer
state after the step. Bytes are counted per rank from the tensors the engine
holds, each storage once:
  params     the model's parameters (ZeRO-3: this rank's partition, `ds_tensor`)
  grads      .grad of the parameters plus the ZeRO optimizer's gradient partitions
  optimizer  the Adam moments (exp_avg, exp_avg_sq)
  fp32 copy  DeepSpeed's fp32 master partition, which it keeps even when training in fp32
and compared with the ZeRO paper's formula for fp32 Adam (4 + 4 + 8 bytes per parameter Ψ, N ranks):
  ddp 16Ψ | zero1 4Ψ + 4Ψ + 8Ψ/N | zero2 4Ψ + 12Ψ/N | zero3 16Ψ/N
The formula has no fp32 master copy in fp32 training; DeepSpeed's is reported in its own column.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
ROOT = Path(__file__).resolve().parents[1]


def formula(strategy: str, n_params: int, world: int) -> dict[str, float]:
    """ZeRO paper, fp32 Adam: bytes per rank of params, grads and optimizer state."""
    p, g, o = 4.0 * n_params, 4.0 * n_params, 8.0 * n_params
    if strategy in ("zero1", "zero2", "zero3"):
        o /= world
    if strategy in ("zero2", "zero3"):
        g /= world
    if strategy == "zero3":
        p /= world
    return {"params": p, "grads": g, "optimizer": o}


# ------------------------------------------------------------------------------- counting
class StorageCounter:
    """Sums storage bytes, counting each storage once across all categories."""

    def __init__(self):
        self.seen: set[int] = set()

    def bytes_of(self, obj, name_filter=None, depth: int = 0) -> int:
        if depth > 4:
            return 0
        if isinstance(obj, torch.Tensor):
            if obj.numel() == 0:
                return 0
            storage = obj.untyped_storage()
            key = storage.data_ptr()
            if key in self.seen or key == 0:
                return 0
            self.seen.add(key)
            return storage.nbytes()
        if isinstance(obj, dict):
            return sum(self.bytes_of(v, name_filter, depth + 1) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(self.bytes_of(v, name_filter, depth + 1) for v in obj)
        return 0

    def attrs(self, obj, words: tuple[str, ...], exclude: tuple[str, ...] = ()) -> int:
        """Bytes of the tensors in obj's attributes whose names contain one of `words`."""
        total = 0
        for name, value in vars(obj).items():
            low = name.lower()
            if any(w in low for w in words) and not any(x in low for x in exclude):
                total += self.bytes_of(value)
        return total


def measure_ddp(net, batch, world: int) -> dict[str, float]:
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(net, gradient_as_bucket_view=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    model(*batch).backward()
    c = StorageCounter()
    params = sum(c.bytes_of(p.data) for p in net.parameters())
    grads = sum(c.bytes_of(p.grad) for p in net.parameters())
    opt.step()
    c = StorageCounter()  # a new phase: freed storages may be reused at the same address
    sum(c.bytes_of(p.data) for p in net.parameters())
    optim = sum(c.bytes_of(s.get(k)) for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq"))
    return {"params": params, "grads": grads, "optimizer": optim, "fp32_copy": 0.0}


def measure_zero(net, batch, stage: int, micro_batch: int) -> dict[str, float]:
    """Gradients are measured after the first of 2 accumulated micro-batches: the gradient memory held
    through an accumulation window (ZeRO-1 keeps full gradients until the step; ZeRO-2/3 reduce-scatter
    each micro-batch into this rank's partition)."""
    import deepspeed

    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 2,
        "zero_optimization": {"stage": stage, "contiguous_gradients": True, "overlap_comm": False,
                              "reduce_bucket_size": 2_000_000, "allgather_bucket_size": 2_000_000,
                              "stage3_prefetch_bucket_size": 2_000_000, "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True,
    }
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    engine, zopt, _, _ = deepspeed.initialize(model=net, optimizer=opt, config=config, dist_init_required=False)

    def param_bytes(c: StorageCounter) -> float:
        if stage == 3:
            return sum(c.bytes_of(p.ds_tensor) for p in engine.module.parameters())
        return sum(c.bytes_of(p.data) for p in engine.module.parameters())

    engine.backward(engine(*batch))
    engine.step()  # not an optimizer step yet: the first micro-batch of 2
    c = StorageCounter()
    params = param_bytes(c)
    grads = sum(c.bytes_of(p.grad) for p in engine.module.parameters())
    grads += c.attrs(zopt, ("grad",), exclude=("ipg", "bucket", "norm"))
    engine.backward(engine(*batch))
    engine.step()
    c = StorageCounter()  # a new phase: freed storages may be reused at the same address
    param_bytes(c)
    base = zopt.optimizer
    optim = sum(c.bytes_of(s.get(k)) for s in base.state.values() for k in ("exp_avg", "exp_avg_sq"))
    fp32 = c.attrs(zopt, ("fp32",))
    return {"params": params, "grads": grads, "optimizer": optim, "fp32_copy": fp32}


def rank_main(strategy: str, d_model: int, layers: int, out: Path) -> None:
    import torch.distributed as dist

    from trainer.models.gpt import GPT

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    net = GPT(vocab_size=256, seq_len=64, d_model=d_model, n_layers=layers, n_heads=d_model // 64)
    n_params = sum(p.numel() for p in net.parameters())
    tokens = torch.randint(0, 256, (1, 65))
    batch = (tokens[:, :-1], tokens[:, 1:])
    if strategy == "ddp":
        got = measure_ddp(net, batch, world)
    else:
        got = measure_zero(net, batch, int(strategy[-1]), micro_batch=1)
    rows = [None] * world
    dist.all_gather_object(rows, got)
    if rank == 0:
        out.write_text(json.dumps({"strategy": strategy, "world": world, "n_params": n_params, "ranks": rows}))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=640)
    ap.add_argument("--layers", type=int, default=11)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--rank-worker", help=argparse.SUPPRESS)  # internal: run one strategy in this rank
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_worker:
        rank_main(args.rank_worker, args.d_model, args.layers, args.out)
        return

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path("~/.cache/trainer/torch_extensions").expanduser()))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies.split(","):
            out = Path(tmp) / f"{strategy}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.ranks}",
                   __file__, "--rank-worker", strategy, "--out", str(out), "--d-model", str(args.d_model),
                   "--layers", str(args.layers)]
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            results.append(json.loads(out.read_text()))
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def print_table(results: list[dict]) -> None:
    mib = 1 << 20
    n = results[0]["n_params"]
    print(f"GPT with {n / 1e6:.1f}M parameters, {results[0]['world']} ranks, fp32 AdamW; MiB per rank (rank 0; "
          "formula in brackets; ratio = measured/formula of params+grads+optimizer)")
    print(f"{'strategy':9} {'params':>16} {'grads':>16} {'optimizer':>16} {'total':>16} {'ratio':>6} {'fp32 copy':>10}")
    for r in results:
        got = r["ranks"][0]
        want = formula(r["strategy"], r["n_params"], r["world"])
        cells = [f"{got[k] / mib:7.1f} [{want[k] / mib:6.1f}]" for k in ("params", "grads", "optimizer")]
        total_got = sum(got[k] for k in ("params", "grads", "optimizer"))
        total_want = sum(want.values())
        cells.append(f"{total_got / mib:7.1f} [{total_want / mib:6.1f}]")
        print(f"{r['strategy']:9} " + " ".join(f"{c:>16}" for c in cells)
              + f" {total_got / total_want:6.3f} {got['fp32_copy'] / mib:10.1f}")


if __name__ == "__main__":
    main()
