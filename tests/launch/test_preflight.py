"""Preflight: each check fails fast, with the fix, on the environment a misconfigured cluster gives."""
from __future__ import annotations

import os
import time

import pytest

from trainer.distributed.preflight import (
    LOADER_WORKER_SHM_BYTES,
    MIB,
    check_master_address,
    check_scontrol,
    check_shm,
    preflight_checks,
    shm_bytes,
    slurm_tasks_per_node,
)
from trainer.errors import UserError

PATH_WITHOUT_SCONTROL = "/nonexistent-bin"


def slurm_env(**extra: str) -> dict[str, str]:
    """One task of a 2-node x 2-task job, as srun sets it."""
    env = {"SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "0",
           "SLURM_JOB_NODELIST": "node[1-2]",
           "MASTER_ADDR": "10.1.2.3", "TRAINER_REQUEUE_BY": "batch", "PATH": os.environ["PATH"]}
    env.update(extra)
    return env


def torchrun_env(**extra: str) -> dict[str, str]:
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "localhost",
           "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x", "PATH": os.environ["PATH"]}
    env.update(extra)
    return env


def test_a_plain_process_passes():
    preflight_checks(devices=1, num_nodes=1, num_workers=0, env={"PATH": os.environ["PATH"]})


def test_a_correct_slurm_layout_passes():
    preflight_checks(devices=2, num_nodes=1, num_workers=0,
                     env=slurm_env(SLURM_NTASKS="2", SLURM_JOB_NUM_NODES="1"))


@pytest.mark.parametrize("extra, pattern", [
    ({"SLURM_NTASKS_PER_NODE": "1", "SLURM_NTASKS": "2"}, r"SLURM started 1 tasks on this node but trainer.devices=2"),
    ({"SLURM_JOB_NUM_NODES": "1", "SLURM_NTASKS": "2"}, r"the SLURM job has 1 nodes but trainer.num_nodes=2"),
    ({"SLURM_NTASKS": "3"}, r"SLURM started 3 tasks but .* needs 4"),
])
def test_slurm_layout_mismatch_names_the_sbatch_fix(extra, pattern):
    with pytest.raises(UserError, match=pattern) as e:
        preflight_checks(devices=2, num_nodes=2, num_workers=0, env=slurm_env(**extra))
    assert "--ntasks-per-node=2" in str(e.value)


def test_interactive_slurm_shell_is_not_a_job_step():
    # `salloc` then `python -m trainer.train`: the shell's SLURM_* are not a rank layout
    preflight_checks(devices=2, num_nodes=1, num_workers=0,
                     env=slurm_env(SLURM_JOB_NAME="interactive", SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1"))


def test_tasks_per_node_from_the_compact_form():
    env = {"SLURM_TASKS_PER_NODE": "8(x2),4", "SLURM_NODEID": "2"}
    assert slurm_tasks_per_node(env) == 4
    assert slurm_tasks_per_node({**env, "SLURM_NODEID": "1"}) == 8


@pytest.mark.parametrize("extra, pattern", [
    ({"LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": "2"}, r"--nproc-per-node=2"),
    ({"WORLD_SIZE": "2"}, r"world has 2 processes .* needs 4"),
])
def test_torchrun_layout_mismatch(extra, pattern):
    with pytest.raises(UserError, match=pattern):
        preflight_checks(devices=2, num_nodes=2, num_workers=0, env=torchrun_env(**extra))


def test_too_few_visible_gpus_for_the_local_ranks():
    with pytest.raises(UserError, match=r"sees 1 GPU\(s\).*--gpus-per-task"):
        preflight_checks(devices=2, num_nodes=2, num_workers=0, env=slurm_env(CUDA_VISIBLE_DEVICES="0"))
    preflight_checks(devices=2, num_nodes=2, num_workers=0, env=slurm_env(CUDA_VISIBLE_DEVICES="0,1"))


def test_unresolvable_master_address_fails_in_seconds():
    start = time.monotonic()
    with pytest.raises(UserError, match=r"'no-such-host\.invalid' \(from MASTER_ADDR\) does not resolve"):
        preflight_checks(devices=2, num_nodes=2, num_workers=0, env=torchrun_env(MASTER_ADDR="no-such-host.invalid"))
    assert time.monotonic() - start < 15


def test_master_address_on_loopback_across_nodes():
    with pytest.raises(UserError, match=r"resolves to loopback .* spans 2 nodes.*--local-addr"):
        check_master_address(2, torchrun_env(MASTER_ADDR="localhost"), "torchrun")
    check_master_address(1, torchrun_env(MASTER_ADDR="localhost"), "torchrun")  # one node: loopback is right


def test_master_address_from_the_slurm_nodelist():
    # no MASTER_ADDR: the first host of the job's node list (expanded as SLURM does)
    env = slurm_env(SLURM_JOB_NODELIST="gpu-node-does-not-exist[07-08]")
    env.pop("MASTER_ADDR")
    with pytest.raises(UserError, match=r"'gpu-node-does-not-exist07' \(from SLURM_JOB_NODELIST="):
        check_master_address(2, env, "slurm")


def test_missing_scontrol_under_slurm():
    env = slurm_env(PATH=PATH_WITHOUT_SCONTROL)
    env.pop("TRAINER_REQUEUE_BY")
    with pytest.raises(UserError, match=r"scontrol.*container-mounts"):
        check_scontrol(env)
    check_scontrol({**env, "TRAINER_REQUEUE_BY": "batch"})  # our batch script requeues from the host


def test_missing_scontrol_fails_the_whole_preflight_under_srun():
    env = slurm_env(SLURM_NTASKS="2", SLURM_JOB_NUM_NODES="1", PATH=PATH_WITHOUT_SCONTROL)
    env.pop("TRAINER_REQUEUE_BY")
    with pytest.raises(UserError, match="scontrol"):
        preflight_checks(devices=2, num_nodes=1, num_workers=0, env=env)


def test_shm_too_small_for_the_loader_workers():
    with pytest.raises(UserError, match=r"/dev/shm is 64 MiB but 8 processes x data.num_workers=4 .* 2048 MiB.*--shm-size=2g"):
        check_shm(8, 4, 64 * MIB)
    check_shm(8, 4, 8 * 4 * LOADER_WORKER_SHM_BYTES)
    check_shm(8, 0, 64 * MIB)  # no workers: nothing to check
    with pytest.raises(UserError, match="no /dev/shm"):
        check_shm(1, 2, None)


def test_shm_is_measured():
    assert shm_bytes("/dev/shm") > 0
    assert shm_bytes("/no/such/mount") is None
    with pytest.raises(UserError, match="no /dev/shm"):
        preflight_checks(devices=1, num_nodes=1, num_workers=2, env={"PATH": os.environ["PATH"]}, shm_path="/no/such")


def test_pytorchjob_with_fewer_pods_than_nodes():
    env = torchrun_env(WORLD_SIZE="8", LOCAL_WORLD_SIZE="8", PET_NPROC_PER_NODE="8", MASTER_ADDR="10.1.2.3")
    with pytest.raises(UserError, match=r"k8s's world has 8 processes .* needs 16"):
        preflight_checks(devices=8, num_nodes=2, num_workers=0, env=env)


def test_torchrun_inside_a_slurm_job_needs_someone_to_requeue():
    env = torchrun_env(MASTER_ADDR="10.1.2.3", SLURM_JOB_ID="5", SLURM_JOB_NAME="train", PATH=PATH_WITHOUT_SCONTROL)
    with pytest.raises(UserError, match="scontrol"):
        preflight_checks(devices=2, num_nodes=2, num_workers=0, env=env)
