"""Build a run's token shards ahead of training, in one process, with the same overrides as the run:

    python -m trainer.prepare_data experiment=gpt2_124m data.path=HuggingFaceFW/fineweb-edu data.name=sample-10BT \\
        data.num_proc=16

Composes the training config exactly as `trainer.train` does, builds the data module and runs
prepare_data(): downloads (or streams) the corpus, loads or trains the tokenizer, tokenizes with
a progress bar and writes the shards into `paths.cache_dir`, keyed by the data fingerprint. The
training run with the same data.* overrides then finds them and starts at once. Prints the corpus
statistics as JSON. Writes no run dir.
"""
from __future__ import annotations

import json
import sys

from trainer.errors import UserError, exit_on_user_error


def prepare_data(overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    from trainer.build import build_datamodule
    from trainer.config import compose_config

    cfg = compose_config(overrides)
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if k.startswith("data."))
    if missing:
        raise UserError(f"{', '.join(missing)} must be set (it is ??? in the config): add {missing[0]}=VALUE.")
    datamodule = build_datamodule(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)).data)
    stats = datamodule.corpus_stats() if hasattr(datamodule, "corpus_stats") else {}
    return {**stats, "built_here": bool(getattr(datamodule, "built_shards", False))}


def main(argv: list[str] | None = None) -> None:
    with exit_on_user_error():
        stats = prepare_data(sys.argv[1:] if argv is None else argv)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
