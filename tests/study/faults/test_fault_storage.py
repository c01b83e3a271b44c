"""Storage faults: a corrupted checkpoint on resume, storage that cannot be written, and a full disk.

Tests run as root in the container, where permission bits do not stop writes (``os.access`` says yes to
a ``chmod 500`` folder): unwritable storage is made with a read-only mount when mounting is allowed, and
with a path under a regular file, which nobody can create.
"""

import os
import re
import subprocess
import time
from pathlib import Path

from fault_tools import (
    checkpoint_problem,
    kill_when,
    registered_checkpoints,
    start_cli,
    steps,
    trial_runs,
)
from helpers.processes import TINY_SWEEP, run_cli, stop_group

from study.run import main


def _mount_tmpfs(path: Path, options: str) -> bool:
    """Mount a tmpfs at ``path``; False where this container may not mount (then the caller falls back)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def _ends_in_a_traceback(stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return bool(lines) and re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", lines[-1]) is not None


# ------------------------------------------------------------------------------------------------------
# A corrupted checkpoint
# ------------------------------------------------------------------------------------------------------

def test_corrupted_checkpoint_fails_its_trial_in_one_line_and_the_others_finish(ray_address, mlflow_db, tmp_path):
    name, storage, iterations = "corrupt", tmp_path / "rr", 40  # 20 → 40: time to kill after a registration
    experiment = storage / name
    args = ["disentangle", "--quick", "--iterations", iterations, *TINY_SWEEP, "--set", f"eval_every={iterations}",
            "--max-failures", "0", "--address", ray_address, "--storage", storage, "--name", name]

    def ad_checkpoint_registered():
        registered = registered_checkpoints(experiment)
        return next(((trial, names[-1]) for trial, names in registered.items() if trial.startswith("adfvae")), None)

    trial, latest = kill_when(args, tmp_path, ad_checkpoint_registered)
    # A restore loads the latest registered checkpoint: make its state garbage (a bad disk, a bad copy)
    state = experiment / trial / latest / "state.pt"
    assert checkpoint_problem(state.parent) is None
    state.write_bytes(b"\x00garbage, not a torch archive\n" * 1000)

    uri = mlflow_db
    client, interrupted = trial_runs(uri, name)
    logged_before = {r.data.tags["trial_id"]: steps(client, r, "recon_loss") for r in interrupted}

    resumed = run_cli(["disentangle", "--resume", "--name", name, "--storage", storage, "--address", ray_address],
                      cwd=tmp_path)
    assert resumed.returncode == 1, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "1 of 2 trials finished" in resumed.stdout
    failed_lines = [line for line in resumed.stdout.splitlines() if line.startswith("FAILED ")]
    assert len(failed_lines) == 1 and failed_lines[0].startswith(f"FAILED {trial}: checkpoint "), failed_lines
    assert f"{state} is unreadable" in failed_lines[0]

    client, runs = trial_runs(uri, name)
    assert len(runs) == 2
    for run in runs:
        history = steps(client, run, "recon_loss")
        assert history == sorted(set(history))  # strictly increasing, nothing logged twice
        assert history[: len(logged_before[run.data.tags["trial_id"]])] == logged_before[run.data.tags["trial_id"]]
        if run.data.params["model"] == "ad_factorvae":
            assert run.info.status == "FAILED"
            reason, _, where = failed_lines[0].split(": ", 1)[1].partition(" (traceback: ")
            assert run.data.tags["error"] == reason and where == f"{experiment / trial / 'error.txt'})"
        else:  # untouched by the other trial's failure: finished, every report and the final evaluation
            assert run.info.status == "FINISHED" and "error" not in run.data.tags
            assert history == list(range(5, iterations + 1, 5))
            for key in ("tc", "d_loss", "eval_recon_loss", "disentanglement", "disentanglement_seed"):
                assert key in run.data.metrics, key
            assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/vae.pt"]


# ------------------------------------------------------------------------------------------------------
# Storage that cannot be written
# ------------------------------------------------------------------------------------------------------

def _main_without_ray(args, monkeypatch, capsys):
    """``main(args)`` in-process, with Ray's start replaced by a failure: these errors must come first."""
    import ray

    def ray_must_not_start(address):
        raise AssertionError("Ray was started although --storage cannot be written")

    monkeypatch.setattr("study.launch.connect_ray", ray_must_not_start)
    code = main(args)
    assert not ray.is_initialized()
    return code, capsys.readouterr().err


def test_storage_under_a_regular_file_fails_in_one_line_before_ray_starts(dsprites_npz, tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file, not a folder\n")
    code, err = _main_without_ray(["disentangle", "--quick", "--data-dir", str(dsprites_npz),
                                   "--storage", str(tmp_path / "afile" / "sub")], monkeypatch, capsys)
    assert code == 2, err
    assert err.strip().count("\n") == 0 and err.startswith("error: --storage "), err


def test_read_only_storage_fails_in_one_line_before_ray_starts(dsprites_npz, tmp_path, monkeypatch, capsys):
    """A read-only tmpfs; where this container may not mount, a ``chmod 500`` folder if we are not root.

    As root without mounting nothing is read-only to us; then only the path under a regular file (the
    test above) stands for unwritable storage, and this test checks that a writable folder is accepted.
    """
    monkeypatch.chdir(tmp_path)
    read_only = tmp_path / "ro"
    mounted = _mount_tmpfs(read_only, "ro,size=1m")
    try:
        if not mounted and os.geteuid() != 0:
            read_only.chmod(0o500)
        if mounted or os.geteuid() != 0:
            code, err = _main_without_ray(["disentangle", "--quick", "--data-dir", str(dsprites_npz),
                                           "--storage", str(read_only / "sub")], monkeypatch, capsys)
            assert code == 2 and err.strip().count("\n") == 0, err
            assert err.startswith(f"error: --storage {read_only / 'sub'}") and "not writable" in err, err
        else:
            from study.options import resolve_storage

            assert resolve_storage(str(read_only / "sub")) == str(read_only / "sub")
    finally:
        if mounted:
            _umount(read_only)
        read_only.chmod(0o700)


# ------------------------------------------------------------------------------------------------------
# A full disk
# ------------------------------------------------------------------------------------------------------

def test_full_disk_fails_the_trial_in_one_line_and_keeps_earlier_results(ray_address, mlflow_db, tmp_path):
    """Storage on a 10 MB tmpfs: the first checkpoint (~6 MB) fits, the second does not.

    Where this container may not mount, the second checkpoint's folder is taken by a regular file
    instead: the same code path (the worker's copy of a checkpoint into storage fails with an OSError),
    though not the driver's own writes of its experiment state, which a real full disk also breaks.
    """
    disk = tmp_path / "disk"
    mounted = _mount_tmpfs(disk, "size=10m")
    name, storage, iterations = "full", disk / "rr", 30
    experiment = storage / name
    args = ["disentangle", "--quick", "--iterations", iterations, *TINY_SWEEP, "--set", f"eval_every={iterations}",
            "--set", "model=factorvae", "--set", "lambda_ad=0",  # the two arms collapse into one trial
            "--max-failures", "0", "--address", ray_address, "--storage", storage, "--name", name]
    try:
        driver = start_cli(args, tmp_path)
        try:
            deadline = time.monotonic() + 240
            while not mounted:  # fallback: block the second checkpoint's folder as soon as the trial has one
                assert time.monotonic() < deadline and driver.poll() is None, "the trial never started"
                trial_dirs = list(experiment.glob("fvae_*"))
                if trial_dirs:
                    (trial_dirs[0] / "checkpoint_000001").write_text("not a folder\n")
                    break
                time.sleep(0.02)
            code = driver.wait(timeout=300)
        finally:
            stop_group(driver)
            for stream in driver.logs:
                stream.close()
        out, err = (tmp_path / "driver.out").read_text(), (tmp_path / "driver.err").read_text()
        assert code in (1, 2), f"exit {code}\n{out[-2000:]}\n{err[-3000:]}"
        assert not _ends_in_a_traceback(err), err[-3000:]
        # The CLI's own line (the summary's FAILED line, or an `error:` line) names the cause
        cause = re.compile("space" if mounted else "checkpoint_000001", re.IGNORECASE)
        reasons = [line for line in (out + err).splitlines() if line.startswith(("FAILED ", "error: "))]
        assert reasons and all(cause.search(line) for line in reasons), out[-2000:] + err[-2000:]

        # Earlier results are intact: the reports before the failure in MLflow, the first checkpoint on disk
        client, runs = trial_runs(mlflow_db, name)
        assert len(runs) == 1 and runs[0].info.status == "FAILED"
        assert cause.search(runs[0].data.tags["error"]) and "\n" not in runs[0].data.tags["error"]
        assert steps(client, runs[0], "recon_loss")[:2] == [5, 10]
        trial_dir = next(experiment.glob("fvae_*"))
        assert checkpoint_problem(trial_dir / "checkpoint_000000") is None
        assert (experiment / "sweep.json").is_file()
    finally:
        if mounted:
            _umount(disk)
