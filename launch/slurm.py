"""SLURM: render an sbatch script from the run config, print it or submit it.

    python -m launch.slurm experiment=gpt_1b launcher.partition=gpu [--dry-run | --submit | --out FILE]

One task per rank (`--ntasks-per-node=trainer.devices`), ranks started by `srun` (never by a
launcher inside the job), USR1 before the time limit, `--requeue`, and the run dir keyed on the
job id so a requeued job resumes. A container image runs through pyxis/enroot (`srun --container-image`).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import jinja2

from launch.cli import compose_spec, parser
from launch.config import REQUEUE_EXIT_CODE, JobSpec
from trainer.errors import UserError, exit_on_user_error

TEMPLATES = Path(__file__).with_name("templates")


def log_dir(spec: JobSpec) -> Path:
    """Where sbatch writes the job's output (SLURM does not create it: the CLI does before submitting)."""
    if spec.launcher.log_dir:
        return Path(spec.launcher.log_dir).expanduser().absolute()
    return (Path(spec.runs_dir).expanduser() / spec.job_name / "slurm").absolute()


def job_command(spec: JobSpec) -> str:
    """`python -m trainer.train <overrides>`, plus the job-keyed run id unless the user chose one."""
    python = "python" if spec.launcher.image else sys.executable  # in a container: the image's python
    line = shlex.join([python, "-m", "trainer.train", *spec.train_args()])
    if not any(o.lstrip("+").startswith("run.id=") for o in spec.overrides):
        line += ' "run.id=${RUN_ID}"'
    return line


def srun_args(spec: JobSpec) -> list[str]:
    lc = spec.launcher
    args = ["--kill-on-bad-exit=1"]  # one rank failing (e.g. a preflight error) ends the step at once, no hang
    if lc.image:
        args.append(f"--container-image={lc.image}")
        if lc.container_mounts:
            args.append(f"--container-mounts={','.join(lc.container_mounts)}")
        args.append(f"--container-workdir={lc.workdir}")
    elif lc.container_mounts:
        raise UserError("launcher.container_mounts needs launcher.image (a container to mount them into)")
    return [shlex.quote(a) for a in args]


def render_sbatch(spec: JobSpec, command: Sequence[str] | None = None, chdir: str | None = None) -> str:
    """The batch script. `command` replaces the trainer command (tests run a small script with it)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    env.filters["q"] = lambda v: shlex.quote(str(v))
    return env.get_template("sbatch.sh.j2").render(
        job_name=spec.job_name,
        nodes=spec.nodes,
        tasks_per_node=spec.procs_per_node,
        gpus_per_node=spec.gpus_per_node,
        cpus_per_task=spec.cpus_per_rank,
        lc=spec.launcher,
        env=spec.launcher.env,
        log_dir=shlex.quote(str(log_dir(spec))),
        chdir=shlex.quote(chdir or os.getcwd()),
        requeue_code=REQUEUE_EXIT_CODE,
        srun_args=srun_args(spec),
        command=shlex.join(command) if command is not None else job_command(spec),
    )


def submit(script: Path) -> str:
    """sbatch the script; return the job id."""
    try:
        out = subprocess.run(["sbatch", "--parsable", str(script)], check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("sbatch is not on PATH: submit from a SLURM login node (or use --dry-run / --out)") from None
    except subprocess.CalledProcessError as e:
        raise UserError(f"sbatch refused {script}: {e.stderr.strip() or e.stdout.strip()}") from None
    return out.stdout.strip().split(";")[0]


def main(argv: Sequence[str] | None = None) -> None:
    p = parser("slurm", "Render (and optionally submit) an sbatch script for a training run.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the batch script (the default)")
    mode.add_argument("--submit", action="store_true", help="write the script next to the job's logs and sbatch it")
    p.add_argument("--out", type=Path, help="write the script to this file")
    args = p.parse_intermixed_args(argv)
    with exit_on_user_error():
        spec = compose_spec("slurm", args.overrides, args.config_dir)
        script = render_sbatch(spec)
        if args.out:
            args.out.write_text(script)
            print(f"wrote {args.out}; submit with: sbatch {args.out}", file=sys.stderr)
        if args.submit:
            logs = log_dir(spec)
            logs.mkdir(parents=True, exist_ok=True)
            path = args.out or logs / f"{spec.job_name}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
            path.write_text(script)
            job_id = submit(path)
            print(f"submitted job {job_id}: {path}\nlogs: {logs}/{spec.job_name}-{job_id}.out")
        elif not args.out:
            print(script, end="")


if __name__ == "__main__":
    main()
