"""The real image, built from the real Dockerfile on the local Debian base (scripts/container.sh), run with
podman: training into a mounted runs volume as an unprivileged user, preemption and resume, two containers
as two torchrun nodes, and the W&B key secret kept out of everything written.

One image is built per session (with the layer cache, only what changed rebuilds); every test runs
containers of it. The default experiment's run is shared by the training test and the secret test (one
container start less). Root only (podman here is rootful); skipped, saying why, where podman cannot run.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli
from tests.faults import netns, procs
from tests.faults.wandb_file import run_id
from tests.launch.conftest import needs_root

# A cold image build (no layer cache) takes minutes and is charged to the first test that needs the image.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800), needs_root("podman", "runc", "mmdebstrap")]
CONTAINER_SH = str(ROOT / "scripts" / "container.sh")
# One tag per session: two sessions on a host (two worktrees) would otherwise re-tag each other's image
# between its build and its use. The layers are shared, so the second build is as warm as before.
IMAGE = f"localhost/trainer:test-{os.getpid()}"
USER = 4242  # an unprivileged uid that is not the image's own (10001): as `--user "$(id -u):$(id -g)"` gives
REQUEUE_EXIT = 124
# Set while the image builds: nothing of the build environment may reach a layer.
BUILD_CANARY = "build-env-canary-" + secrets.token_hex(8)


def podman(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["bash", CONTAINER_SH, "podman", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"podman {' '.join(args[:3])}...: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    probe = podman("info", timeout=60, check=False)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run here: {probe.stderr.strip()[-300:]}")
    # No extras: these tests need no DeepSpeed, and a cold build (on a fresh machine) skips building it.
    env = {**os.environ, "IMAGE": IMAGE, "EXTRAS": "", "WANDB_API_KEY": BUILD_CANARY}
    r = subprocess.run(["bash", CONTAINER_SH, "image"], env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"image build failed\n{r.stdout[-2000:]}\n{r.stderr[-6000:]}"
    yield IMAGE
    # Only this session's tag goes (named twice: `untag IMAGE` alone would drop every name the image has,
    # another session's too); the layers stay as the next session's build cache.
    podman("untag", IMAGE, IMAGE, check=False, timeout=60)


def owned_dir(path: Path) -> Path:
    """A host directory that the container's user owns, as a user's own runs directory would be."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, USER, USER)
    return path


@pytest.fixture(scope="session")
def container_cache(tmp_path_factory) -> Path:
    """One token-shard cache for every container of the session (the image's stdlib is the corpus)."""
    return owned_dir(tmp_path_factory.mktemp("container-cache"))


def run_args(runs: Path, cache: Path, name: str, *extra: str) -> list[str]:
    return ["run", "--rm", "--name", name, "--user", f"{USER}:{USER}", "-v", f"{runs}:/workspace/runs",
            "-v", f"{cache}:/opt/trainer/cache", *extra]


def tiny(run: str, steps: int, *extra: str) -> list[str]:
    return [*procs.TINY, f"run.dir=/workspace/runs/{run}", f"trainer.max_steps={steps}", *extra]


@pytest.fixture
def names():
    """Container names to remove however the test ends (a killed `podman run` leaves its container)."""
    created: list[str] = []

    def new_name() -> str:
        created.append(f"trainer-test-{uuid.uuid4().hex[:8]}")
        return created[-1]

    yield new_name
    for name in created:
        podman("rm", "--force", "--time", "0", name, check=False, timeout=60)


@dataclass
class DefaultRun:
    run: Path  # its run dir, on the host
    logs: str  # the container's stdout and stderr
    key: str  # the W&B key the container was given as a mounted secret


@pytest.fixture(scope="module")
def default_run(image, tmp_path_factory, container_cache) -> DefaultRun:
    """The default experiment, shortened, trained once in a container for two tests (one container start
    less): as uid 4242 into a mounted runs dir, with a W&B key mounted as a secret (WANDB_API_KEY_FILE) and
    W&B offline (no server here; `auto` would go online with a key)."""
    tmp = tmp_path_factory.mktemp("default-run")
    runs = owned_dir(tmp / "runs")
    key = "wk-" + secrets.token_hex(20)
    secret = tmp / "secrets" / "wandb-key"
    secret.parent.mkdir()
    secret.write_text(key + "\n")
    secret.chmod(0o444)
    # After training, the same container proves that the entrypoint exported the key, printing only its hash.
    script = 'python -m trainer.train "$@" && printf %s "$WANDB_API_KEY" | sha256sum'
    name = f"trainer-test-{uuid.uuid4().hex[:8]}"
    try:
        r = podman(*run_args(runs, container_cache, name, "-v", f"{secret}:/run/secrets/wandb:ro",
                             "-e", "WANDB_API_KEY_FILE=/run/secrets/wandb"),
                   image, "bash", "-c", script, "trainer", "trainer.max_steps=10", "trainer.val_every_steps=10",
                   "data.val_batches=2", "checkpoint.every_n_steps=5", "model.seq_len=64", "trainer.progress_bar=false",
                   "run.id=default", "logger.wandb.mode=offline", timeout=600)
    finally:
        podman("rm", "--force", "--time", "0", name, check=False, timeout=60)
    return DefaultRun(runs / "gpt_tiny_cpu" / "default", r.stdout + r.stderr, key)


def test_the_default_experiment_trains_in_the_container_and_the_host_exports_it(image, default_run):
    run = default_run.run
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["summary"]["steps"] == 10 and manifest["summary"]["stopped"] == "completed"
    assert manifest["run_dir"] == "/workspace/runs/gpt_tiny_cpu/default"
    assert manifest["packages"]["torch"].startswith("2.13.0"), manifest["packages"]
    # The commit the image was built from (no .git in the image: the build recorded it).
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert manifest["git"]["sha"] == head, manifest["git"]
    label = podman("image", "inspect", "--format", "{{index .Labels \"org.opencontainers.image.revision\"}}", image)
    assert label.stdout.strip() == head
    # Written as the unprivileged user, into the mounted volume.
    assert {p.lstat().st_uid for p in run.rglob("*")} == {USER}
    assert "run summary" in default_run.logs
    # The image's own HOME and cache, with no volume over them (every training container here mounts one
    # on the cache), take nested directories and files from a uid not the image's: `--user` alone must work.
    podman("run", "--rm", "--user", f"{USER}:{USER}", image, "bash", "-c",
           'mkdir -p "$HOME/x/y" "$TRAINER_CACHE/x/y" && touch "$HOME/x/y/f" "$TRAINER_CACHE/x/y/f"',
           timeout=120)

    # The host takes it from there: export and generate from the container's run dir.
    exported = cli("trainer.export", f"run.dir={run}", timeout=300)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (run / "export" / "model.safetensors").stat().st_size > 0
    generated = cli("trainer.generate", f"run.dir={run}", "prompt=def ", "tokens=16", timeout=300)
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert generated.stdout.strip()


def test_sigterm_checkpoints_exits_124_and_the_same_command_resumes_the_same_wandb_run(image, tmp_path,
                                                                                      container_cache, names):
    runs = owned_dir(tmp_path / "runs")
    overrides = tiny("preempt", 40, "checkpoint.every_n_steps=4", "trainer.val_every_steps=100",
                     "+data.batch_delay_s=0.1", "logger.wandb=true")
    run = runs / "preempt"
    with procs.jobs() as started:
        name = names()
        first = procs.Job(["bash", CONTAINER_SH, "podman", *run_args(runs, container_cache, name), image, *overrides],
                          tmp_path / "first.log", timeout_s=300)
        started.append(first)
        procs.wait_for("checkpoint step 4", lambda: 4 in procs.checkpoint_steps(run), 240, job=first)
        podman("kill", "--signal", "TERM", name)  # what `podman stop`, Docker and Kubernetes send first
        assert first.wait() == REQUEUE_EXIT, first.tail()
        summary = json.loads((run / "manifest.json").read_text())["summary"]
        assert summary["stopped"] == "preempted", summary
        saved = summary["last_checkpoint"]
        assert 4 <= saved < 40 and saved in procs.checkpoint_steps(run)

        second = procs.Job(["bash", CONTAINER_SH, "podman", *run_args(runs, container_cache, names()), image,
                            *overrides], tmp_path / "second.log", timeout_s=300)
        started.append(second)
        assert second.wait() == 0, second.tail()
    assert f"resuming from step {saved}" in second.output()
    summary = json.loads((run / "manifest.json").read_text())["summary"]
    assert summary["stopped"] == "completed" and summary["steps"] == 40
    wandb_id = (run / "wandb_id.txt").read_text().strip()
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(run_id(f) == wandb_id for f in files), files
    assert procs.logged_steps(run) == list(range(40))


@pytest.fixture
def hosts():
    netns.hosts_up()
    yield
    netns.hosts_down()


def test_two_containers_as_two_torchrun_nodes_train_like_one_host(image, tmp_path, container_cache, names, hosts):
    """Each container joins one of the two network-namespace "servers" (its own address on a veth pair)."""
    runs, steps, port = owned_dir(tmp_path / "runs"), 6, 29431
    common = ["strategy=ddp", "checkpoint.every_n_steps=100", "trainer.val_every_steps=100", "logger.wandb=false"]
    with procs.jobs() as started:
        single = procs.Job(["bash", CONTAINER_SH, "podman", *run_args(runs, container_cache, names()), image,
                            *tiny("one_host", steps, *common, "trainer.devices=2")], tmp_path / "one_host.log",
                           timeout_s=400)
        started.append(single)
        nodes = []
        for h, (ns, addr, ifname) in enumerate(netns.HOSTS):
            launcher = [f"launcher.rdzv_endpoint={netns.HOSTS[0][1]}:{port}", "launcher.rdzv_id=containers",
                        f"launcher.local_addr={addr}", f"launcher.rdzv_is_host={'true' if h == 0 else 'false'}",
                        "launcher.max_restarts=0"]
            # Names resolve from /etc/hosts: the namespaces reach no DNS server (lookups would wait it out).
            args = run_args(runs, container_cache, names(), "--network", f"ns:/run/netns/{ns}",
                            f"--hostname=host{h + 1}", *[f"--add-host=host{i + 1}:{a}" for i, (_, a, _) in
                                                         enumerate(netns.HOSTS)],
                            "-e", f"GLOO_SOCKET_IFNAME={ifname}", "-e", "OMP_NUM_THREADS=1")
            nodes.append(procs.Job(["bash", CONTAINER_SH, "podman", *args, image, "python", "-m", "launch.torchrun",
                                    *tiny("two_hosts", steps, *common, "trainer.num_nodes=2"), *launcher],
                                   tmp_path / f"node{h}.log", timeout_s=400))
        started += nodes
        for job in [*nodes, single]:
            assert job.wait() == 0, "\n".join(j.tail(3000) for j in [*nodes, single])
    a, b = procs.logged_losses(runs / "one_host"), procs.logged_losses(runs / "two_hosts")
    assert sorted(a) == sorted(b) == list(range(steps)), (a, b)
    diff = max(abs(a[s] - b[s]) for s in a)
    print(f"containers: max |loss(one host) - loss(two containers)| over {steps} steps = {diff:.2e}")
    assert diff <= 1e-6 * max(abs(v) for v in a.values()), (a, b)
    assert "world 2" in nodes[0].output()


def test_the_wandb_key_secret_appears_nowhere_in_the_run_dir_logs_or_image(image, default_run):
    key, logs, run = default_run.key, default_run.logs, default_run.run
    hashed = f"{hashlib.sha256(key.encode()).hexdigest()}  -"
    assert hashed in logs, logs[-3000:]  # the trainer ran with the key in its environment
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb")), "W&B wrote no run file"

    needle = key.encode()
    assert key not in logs.replace(hashed, "")
    leaked = [p for p in run.rglob("*") if p.is_file() and needle in p.read_bytes()]
    assert not leaked, f"the W&B key is in {leaked}"

    # The image: its metadata and history, then every file of every layer (the build ran with a canary key).
    for text in (podman("history", "--no-trunc", "--format", "json", image).stdout,
                 podman("image", "inspect", image).stdout):
        assert key not in text and BUILD_CANARY not in text
    mount = podman("image", "mount", image).stdout.strip()
    try:
        found = subprocess.run(["grep", "-rlF", "-e", key, "-e", BUILD_CANARY, mount], capture_output=True, text=True,
                               timeout=600)
        assert found.returncode == 1 and not found.stdout, f"secret found in image files: {found.stdout[:2000]}"
    finally:
        podman("image", "unmount", image, check=False)
