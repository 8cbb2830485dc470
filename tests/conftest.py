import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # Each pytest-xdist worker's processes get their share of the cores (trainer.distributed.env.cpu_threads_per_rank
    # reads it): torch's default, one thread per core in every process, made two workers' runs spin on each
    # other's cores (measured: a tiny run took 1.6x the time and 2x the CPU next to one busy core).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))


def pytest_addoption(parser):
    parser.addoption("--extended", action="store_true",
                     help="also run the `extended` tier: end-to-end tests whose paths the default suite already "
                          "covers more cheaply (more strategies, more hosts, a fresh install, benchmark smoke runs)")
    parser.addoption("--store-durations", action="store_true",
                     help=f"write each test group's seconds to {DURATIONS.relative_to(ROOT)} (run the whole default "
                          "suite): pytest-xdist workers take the longest groups first")


# Tests that share something run on one pytest-xdist worker, one after another: the SLURM
# cluster's ports (slurm_cluster_session), and the two network-namespace "servers" (scripts/netns_hosts.sh:
# fixed names; the container two-node test uses them too).
SHARED_HOSTS = {
    # not a host resource: the session's 2-rank runs (tests/distributed/conftest.py `runs`), trained once
    "distributed-runs": ("tests/distributed/test_checkpoints.py", "tests/distributed/test_equivalence.py",
                         "tests/distributed/test_activation_checkpointing.py"),
    "slurm": ("tests/faults/test_slurm_requeue.py", "tests/launch/test_slurm_cluster.py", "tests/lifecycle/test_pipeline_slurm.py"),
    "netns": ("tests/faults/test_netns_elastic.py", "tests/faults/test_netns_multinode.py", "tests/launch/test_netns_torchrun.py",
              "tests/launch/test_container_image.py"),
}


_GROUP_OF_FILE = {path: name for name, paths in SHARED_HOSTS.items() for path in paths}
# Seconds each group took in the last `--store-durations` run (two workers, this repo's CI machine size).
DURATIONS = ROOT / "tests" / "durations.json"


def group_of(nodeid: str) -> str:
    path = nodeid.split("::")[0]
    return _GROUP_OF_FILE.get(path, path)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """The default suite (what CI runs) stays within its time budget; `--extended` runs everything.
    Under pytest-xdist (`--dist loadgroup`, scripts/test.sh) a file's tests stay on one worker (its module
    fixtures are built once), the files of SHARED_HOSTS share one worker per resource, and the groups are
    handed out longest first (tests/durations.json): a long group started last would run alone at the end."""
    xdist = config.pluginmanager.hasplugin("xdist")
    skip = pytest.mark.skip(reason="extended tier: run with `bash scripts/test.sh --extended`")
    for item in items:
        if "extended" in item.keywords and not config.getoption("--extended"):
            item.add_marker(skip)
    if xdist:
        if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' collection is the order the controller hands out
            seconds = _expected_seconds(items)
            items.sort(key=lambda item: -seconds[group_of(item.nodeid)])  # stable: a group's own order is kept
        for item in items:
            item.add_marker(pytest.mark.xdist_group(group_of(item.nodeid)))


def _expected_seconds(items) -> dict[str, float]:
    """Each group's seconds from tests/durations.json; a group it does not know yet: a guess from its tests."""
    import json
    from collections import defaultdict

    known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    guess: dict[str, float] = defaultdict(float)
    for item in items:
        skipped = any(m.name == "skip" for m in item.iter_markers())
        guess[group_of(item.nodeid)] += 0 if skipped else 10 if "slow" in item.keywords else 0.2
    return {group: known.get(group, guessed) for group, guessed in guess.items()}


class _DurationRecorder:
    """--store-durations: sums each group's setup, call and teardown seconds, as the workers report them."""

    def __init__(self):
        from collections import defaultdict

        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report):
        self.seconds[group_of(report.nodeid)] += report.duration

    def pytest_sessionfinish(self, session, exitstatus):
        import json

        known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
        known.update({group: round(s, 1) for group, s in self.seconds.items()})
        DURATIONS.write_text(json.dumps(dict(sorted(known.items(), key=lambda kv: -kv[1])), indent=1) + "\n")


def pytest_configure(config):
    if config.getoption("--store-durations") and not os.environ.get("PYTEST_XDIST_WORKER"):
        config.pluginmanager.register(_DurationRecorder(), "store-durations")
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # xdist would reorder the groups by their number of tests
    if getattr(config.option, "dist", "no") == "loadgroup" and not os.environ.get("PYTEST_XDIST_WORKER"):
        from importlib.metadata import version

        if tuple(int(x) for x in version("pytest").split(".")[:2]) >= (9, 2):
            raise pytest.UsageError(f"pytest {version('pytest')}: pytest-xdist's --dist loadgroup cannot group tests on "
                                    "pytest 9.2 (pytest-dev/pytest-xdist#1386); install the pinned pytest "
                                    "(requirements/constraints.txt) or run TEST_WORKERS=0")


def pytest_collection_finish(session):
    """Refuse to run ungrouped (the version check above is the readable one; this one catches any other
    cause): the SLURM and netns tests would run on two workers at once and fight over ports and namespaces."""
    if os.environ.get("PYTEST_XDIST_WORKER") and session.config.getvalue("loadgroup"):
        ungrouped = [item.nodeid for item in session.items if "@" not in item.nodeid.rsplit("]", 1)[-1]]
        if ungrouped:
            raise pytest.UsageError(f"pytest-xdist did not group {len(ungrouped)} tests (e.g. {ungrouped[0]}): "
                                    "install the pinned pytest (requirements/constraints.txt) or run TEST_WORKERS=0")


@pytest.fixture(autouse=True)
def no_inherited_wandb_service():
    """W&B records its service's address in os.environ (WANDB_SERVICE) when a test starts a run in-process;
    left there, every later test's subprocesses would share this pytest's service (and its claimed run
    ids). tests/tracking/test_wandb_runs.py tests that sharing on purpose."""
    yield
    os.environ.pop("WANDB_SERVICE", None)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One token-shard/kernels cache for the whole session, so shards are built once: with pytest-xdist,
    one for all workers (the shard builders lock: tests/unit/test_data_shards.py)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return tmp_path_factory.mktemp("trainer-cache")
    shared = tmp_path_factory.getbasetemp().parent / "trainer-cache"  # basetemp is per worker, its parent is not
    shared.mkdir(exist_ok=True)
    return shared


@pytest.fixture(scope="session")
def slurm_cluster_session(tmp_path_factory) -> dict[str, str]:
    """One real SLURM cluster (slurmctld, slurmd, munge: scripts/slurm_cluster.sh) for the whole session,
    started by the first test that needs it: the environment its client commands need. Ports of its own,
    so a developer's cluster (default ports) can keep running. Tests that use it need root and the SLURM
    tools (tests/launch/conftest.py needs_root)."""
    cluster = str(ROOT / "scripts" / "slurm_cluster.sh")
    state = tmp_path_factory.mktemp("slurm")
    env = {"SLURM_CLUSTER_DIR": str(state), "SLURM_CONF": str(state / "slurm.conf"),
           "SLURM_CLUSTER_CTLD_PORT": "26817", "SLURM_CLUSTER_SLURMD_PORT": "26818"}
    run = lambda verb, timeout: subprocess.run([cluster, verb], env={**os.environ, **env}, capture_output=True,  # noqa: E731
                                               text=True, timeout=timeout)
    r = run("start", 90)
    if r.returncode != 0:
        run("stop", 60)
        pytest.fail(f"slurm_cluster.sh start failed:\n{r.stdout}\n{r.stderr}")
    again = run("start", 60)
    assert again.returncode == 0 and "already running" in again.stdout  # idempotent
    yield env
    r = run("stop", 60)
    assert r.returncode == 0, r.stderr
    assert not state.exists()


@pytest.fixture
def slurm_cluster(slurm_cluster_session) -> dict[str, str]:
    """The session's SLURM cluster, its queue emptied after the test: a job a failed test left behind
    would hold the node's CPUs and keep the next test's jobs pending."""
    yield slurm_cluster_session
    subprocess.run(["scancel", "--user", pwd.getpwuid(os.getuid()).pw_name], env={**os.environ, **slurm_cluster_session},
                   capture_output=True, timeout=60)


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a module of this project as a user would, capturing output."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd or ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def train_checks_in_process(*args: str) -> subprocess.CompletedProcess:
    """`python -m trainer.train ARGS` up to where Hydra's main takes over (the refusals of bad overrides and
    configs: trainer.train.precheck), run in this process: the same code, without a subprocess's ~8 s of
    imports. Reaching Hydra's main fails the test (a config the checks let through would train here)."""
    import contextlib
    import io

    import trainer.train as entry

    out, err = io.StringIO(), io.StringIO()
    code = 0
    saved_argv, saved_hydra_main = sys.argv, entry._hydra_main
    sys.argv = ["trainer.train", *args]

    def reached_hydra() -> None:
        raise AssertionError(f"the checks let {args} through to Hydra's main")

    entry._hydra_main = reached_hydra
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            entry.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv, entry._hydra_main = saved_argv, saved_hydra_main
    return subprocess.CompletedProcess(["trainer.train", *args], code, out.getvalue(), err.getvalue())
