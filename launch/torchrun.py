"""torchrun on one node or many, with elastic restarts.

    python -m launch.torchrun experiment=gpt2_124m [--dry-run]
    RDZV_ENDPOINT=node1:29400 RDZV_ID=job42 python -m launch.torchrun experiment=gpt_1b   # on every node

One node without an endpoint: `--standalone`. Several nodes: a c10d rendezvous at
launcher.rdzv_endpoint (RDZV_ENDPOINT) under launcher.rdzv_id (RDZV_ID), the same on every
node; `--nnodes=min:max` when launcher.min_nodes is set. Workers that die are restarted
up to launcher.max_restarts times, resuming from the run dir's newest valid checkpoint.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

from launch.cli import compose_spec, parser, shell_line
from launch.config import JobSpec
from trainer.errors import UserError, exit_on_user_error

# Restarts after a killed worker failed 4 times in 6 with the default shared rendezvous store
# (the agent's TCP store kept a dead worker's gloo address, pytorch/pytorch#135712) and
# succeeded 6 of 6 with the store not shared: always set it.
# torchrun forwards SIGUSR1 (SLURM's warning signal) to the workers too, instead of dying of it.
TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"}


def torchrun_argv(spec: JobSpec, command: Sequence[str] | None = None) -> list[str]:
    """The torchrun command line; `command` defaults to `-m trainer.train <overrides>`."""
    lc = spec.launcher
    nnodes = f"{lc.min_nodes}:{spec.nodes}" if lc.min_nodes is not None else str(spec.nodes)
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc-per-node={spec.procs_per_node}"]
    if spec.nodes == 1 and lc.min_nodes is None and lc.rdzv_endpoint is None:
        argv.append("--standalone")  # a private c10d store on a free local port
    else:
        if lc.rdzv_endpoint is None:
            raise UserError(
                f"trainer.num_nodes={spec.nodes} needs a rendezvous: set RDZV_ENDPOINT=HOST:PORT"
                " (or launcher.rdzv_endpoint) to an address of the first node that every node reaches"
            )
        if lc.rdzv_id is None:
            raise UserError(
                "a multi-node run needs a rendezvous id shared by every node: set RDZV_ID (or launcher.rdzv_id),"
                " e.g. the scheduler's job id; the run dir is keyed on it, so a restart finds its checkpoints"
            )
        argv += ["--rdzv-backend=c10d", f"--rdzv-endpoint={lc.rdzv_endpoint}", f"--rdzv-id={lc.rdzv_id}"]
        if lc.rdzv_is_host is not None:
            argv.append(f"--rdzv-conf=is_host={int(lc.rdzv_is_host)}")
    if lc.local_addr:
        argv.append(f"--local-addr={lc.local_addr}")
    argv.append(f"--max-restarts={lc.max_restarts}")
    if command is None:
        command = ["-m", "trainer.train", *spec.train_args()]
    return [*argv, *command]


def torchrun_env(spec: JobSpec) -> dict[str, str]:
    """The variables the launcher adds to the inherited environment."""
    return {**TORCHRUN_ENV, **spec.launcher.env}


def main(argv: Sequence[str] | None = None) -> None:
    p = parser("torchrun", "Start the trainer under torchrun (one node or several).")
    p.add_argument("--dry-run", action="store_true", help="print the command that would run, and exit")
    args = p.parse_intermixed_args(argv)
    with exit_on_user_error():
        spec = compose_spec("torchrun", args.overrides, args.config_dir)
        cmd, env = torchrun_argv(spec), torchrun_env(spec)
    if args.dry_run:
        print(shell_line(cmd, env))
        return
    sys.stdout.flush()
    os.execve(cmd[0], cmd, {**os.environ, **env})  # torchrun replaces us: signals reach it directly


if __name__ == "__main__":
    main()
