"""Real processes for the tests: the study CLI, a Ray head, an MLflow server — each in its own session.

Every process a test starts goes through :func:`spawn` (its own session, so its whole process group can be
killed) and carries :data:`MARKER` in its environment, which its children inherit (Ray's raylet and
workers, uvicorn under ``mlflow server``). :func:`leftover_processes` finds what still carries the marker,
which is how the suite proves that nothing it started outlives it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

# Test-size overrides: ~20 iterations, 100/50 votes, small discriminator (the update logic is size-free).
TINY_SWEEP = [
    "--set", "report_every=5", "--set", "checkpoint_every=10", "--set", "eval_every=20",
    "--set", "metric_num_train=100", "--set", "metric_num_eval=50", "--set", "metric_num_variance=500",
    "--set", "seed_metric_votes=50", "--set", "seed_metric_batch_size=20", "--set", "figure_images=2",
    "--set", "batch_size=16", "--set", "d_hidden_units=64", "--set", "d_hidden_layers=2",
    "--set", "pairs=random_pair",
]

# One value per pytest session: a process whose environment holds it was started by this suite.
MARKER = "VAE_STUDY_TEST_SESSION"
SESSION_ID = os.environ.get(MARKER) or f"{os.getpid()}-{time.time_ns()}"
# Helpers that Python's multiprocessing starts for the test process itself (joblib, torch): not ours to stop.
PYTHON_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
POLL_S = 0.02  # fast enough to catch a 66 MB checkpoint copy in progress


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env() -> dict[str, str]:
    """The environment of every process the tests start: Ray quiet and local, MLflow from flags only."""
    # MLflow's telemetry would post from each driver and, offline, wait out its timeouts at exit (Ray's usage
    # stats likewise); neither is what the tests check
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "MLFLOW_DISABLE_TELEMETRY": "true", MARKER: SESSION_ID}
    env.pop("MLFLOW_TRACKING_URI", None)  # a user's URI must not catch the tests' runs
    return env


def copy_mlflow_store(template, workdir) -> str:
    """``workdir/mlflow.db`` as a copy of ``template``, an empty store already created and migrated; its URI.

    A new SQLite store costs each CLI run ~3 s of table creation and schema migrations (alembic); the copy
    is what the CLI would have made itself in ``workdir``: its Default experiment's artifacts are pointed
    at ``workdir/mlruns/0``, as MLflow sets them for a store created from there. Tests about a new store
    let the CLI create it (the ``quick_sweep`` fixture, the MNIST anomaly sweep).
    """
    path = Path(workdir) / "mlflow.db"
    shutil.copyfile(template, path)
    with sqlite3.connect(path) as db:
        db.execute("update experiments set artifact_location = ? where experiment_id = 0",
                   (str(Path(workdir) / "mlruns" / "0"),))
    db.close()
    return f"sqlite:///{path}"


def spawn(argv, *, cwd=None, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=None) -> subprocess.Popen:
    """``Popen`` in a new session, marked as this suite's; stop it with :func:`stop_group`."""
    return subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env or cli_env(), stdout=stdout, stderr=stderr,
                            start_new_session=True)


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 30) -> None:
    """Signal the whole process group of ``proc`` (leader and every child), then reap the leader."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def run_cli(args, cwd, timeout=300, check=False, module="study.run"):
    """``python -m study.run ARGS`` as a real process in its own session; returns the CompletedProcess.

    On a timeout the whole group is killed before the error propagates, so nothing is left running.
    """
    proc = spawn([sys.executable, "-m", module, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        raise
    completed = subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())
    if check and completed.returncode != 0:
        raise AssertionError(f"exit {completed.returncode}\nstdout:\n{completed.stdout}\nstderr:\n{completed.stderr}")
    return completed


def start_cli(args, cwd, log_name="driver", module="study.run"):
    """``python -m study.run ARGS`` (or ``module``) in its own session (so its whole group can be killed);
    output to files."""
    cwd = Path(cwd)
    out = open(cwd / f"{log_name}.out", "a")  # the caller closes proc.logs once the process has ended
    err = open(cwd / f"{log_name}.err", "a")
    proc = spawn([sys.executable, "-m", module, *args], cwd=cwd, stdout=out, stderr=err)
    proc.logs = (out, err)
    return proc


def kill_when(args, cwd, condition, timeout=180, log_name="driver", module="study.run"):
    """Start the driver, SIGKILL its process group as soon as ``condition()`` is truthy; return that value.

    The trial workers belong to the shared Ray head, not to the driver's group: Ray ends them when their
    driver dies, whatever they were doing (training, or copying a checkpoint into storage).
    """
    proc = start_cli(args, cwd, log_name, module)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = condition()
            if hit:
                return hit
            if proc.poll() is not None:
                raise AssertionError(f"the driver ended (exit {proc.returncode}) before it could be killed; "
                                     f"see {cwd}/{log_name}.err")
            time.sleep(POLL_S)
        raise AssertionError(f"condition never held within {timeout} s")
    finally:
        stop_group(proc)
        for stream in proc.logs:
            stream.close()


def kill_after_first_checkpoint(args, cwd, experiment_dir, timeout=240):
    """Start ``study.run ARGS``; SIGKILL its process group once Ray's experiment state lists a checkpoint."""
    def checkpoint_in_state() -> bool:
        return any("checkpoint_0000" in _read(state) for state in Path(experiment_dir).glob("experiment_state-*.json"))

    kill_when(args, cwd, checkpoint_in_state, timeout=timeout)


def _read(path) -> str:
    try:
        return Path(path).read_text()
    except OSError:  # being replaced right now
        return ""


def leftover_processes() -> list[str]:
    """``pid command`` of every live process (other than this one) that carries this session's marker."""
    needle = f"{MARKER}={SESSION_ID}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state, parent = (entry / "stat").read_text().split(") ", 1)[1].split()[:2]
            if state == "Z":
                continue  # a zombie holds no resources; its parent reaps it
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if int(parent) == os.getpid() and any(helper in command for helper in PYTHON_HELPERS):
                continue  # pytest's own helper: it exits with pytest, when its pipe closes
        except OSError:  # ended while we looked, or not ours to read
            continue
        found.append(f"{entry.name} {command[:160]}")
    return found
