"""What a sweep prints and how it stops: the time-left estimate, and one Ctrl-C on a real sweep, then its resume.

The header and the end-of-sweep MLflow links are checked on the shared quick sweep's output
(tests/study/test_run_disentangle.py); the FAILED line's traceback path on the diverging sweep
(tests/study/faults/test_fault_divergence.py).
"""

import glob
import itertools
import json
import os
import re
import shlex
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
from helpers.processes import TINY_SWEEP, run_cli, start_cli, stop_group
from mlflow import MlflowClient

from study.progress import estimate_remaining_s, format_duration, header_line


def _makespan_brute_force(ends: list[float], pending: int, duration: float) -> float:
    """The least time until every trial has ended, over every assignment of the pending trials to slots."""
    best = float("inf")
    for assignment in itertools.product(range(len(ends)), repeat=pending):
        load = list(ends)
        for slot in assignment:
            load[slot] += duration
        best = min(best, max(load))
    return best


def test_remaining_time_by_hand():
    # finished trials took 40 s; running: 10 s at 25 % (30 s left) and 30 s at 75 % (10 s left); 3 pending
    # on 2 slots: the slot free at 10 s runs two (10 → 50 → 90), the one free at 30 s runs one (→ 70)
    assert estimate_remaining_s([40.0, 40.0], [(10.0, 0.25), (30.0, 0.75)], pending=3) == pytest.approx(90.0)
    # no trial has finished: the typical duration is the running trials' extrapolation (40 s and 40 s)
    assert estimate_remaining_s([], [(10.0, 0.25), (30.0, 0.75)], pending=1) == pytest.approx(50.0)
    # a trial without progress yet takes the typical duration less what it has run
    assert estimate_remaining_s([60.0], [(15.0, 0.0)], pending=0) == pytest.approx(45.0)
    assert estimate_remaining_s([], [(5.0, 0.0)], pending=2) is None  # nothing to extrapolate from
    assert estimate_remaining_s([12.0], [], pending=0) == 0.0


@pytest.mark.parametrize("running, pending, slots", [
    ([(10.0, 0.5), (3.0, 0.1), (50.0, 0.9)], 4, None),
    ([(1.0, 0.2)], 5, 3),  # idle slots start pending trials at once
    ([(8.0, 0.4), (2.0, 0.05)], 3, 2),
])
def test_remaining_time_is_the_least_makespan(running, pending, slots):
    """Greedy list scheduling of equal durations is optimal: it matches the brute-force least makespan."""
    finished = [20.0, 30.0]
    ends = [elapsed * (1 - done) / done for elapsed, done in running]
    ends += [0.0] * ((slots or len(running)) - len(ends))
    expected = _makespan_brute_force(ends, pending, duration=25.0)
    assert estimate_remaining_s(finished, running, pending, slots) == pytest.approx(expected)


def test_header_line():
    line = header_line({"running": 2, "pending": 1, "done": 3, "failed": 0}, 83.4, 3725.0)
    assert line == "progress: 2 running, 1 pending, 3 done, 0 failed | elapsed 0:01:23 | ~1:02:05 left"
    assert format_duration(None) == "?"


def _registered_iterations(experiment_dir: Path) -> dict[str, int]:
    """{trial folder: iteration of its newest checkpoint that Ray's newest saved experiment state registers}."""
    newest = sorted(glob.glob(str(experiment_dir / "experiment_state-*.json")))[-1]
    found: dict[str, int] = {}
    for _, run_metadata in json.loads(Path(newest).read_text())["trial_data"]:
        blob = json.loads(run_metadata)["checkpoint_manager"]  # a cloudpickle hex blob; the paths are plain text
        raw = bytes.fromhex(blob["value"]) if isinstance(blob, dict) else str(blob).encode()
        for trial, checkpoint in re.findall(rb"/([\w.=+-]+)/(checkpoint_\d{6})", raw):
            metrics = json.loads((experiment_dir / trial.decode() / checkpoint.decode() / "metrics.json").read_text())
            found[trial.decode()] = max(found.get(trial.decode(), 0), metrics["iteration"])
    return found


def _logged_steps(db: Path) -> dict[str, int]:
    """{run name: last step of recon_loss} that the driver has logged to MLflow so far (read-only, no wait)."""
    if not db.exists():
        return {}
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)) as connection:
            rows = connection.execute("select r.name, max(m.step) from metrics m join runs r on m.run_uuid = "
                                      "r.run_uuid where m.key = 'recon_loss' group by r.name").fetchall()
    except sqlite3.Error:  # locked by the driver's write, or the tables not made yet
        return {}
    return dict(rows)


def test_one_ctrl_c_stops_at_the_next_checkpoints_and_prints_the_resume_command(ray_address, dsprites_npz, tmp_path):
    """SIGINT to the driver's process group (what Ctrl-C sends) after a trial's first checkpoint; then resume.

    Reports every 5, checkpoints every 10 of 30 iterations; the SIGINT goes once the driver has logged a
    trial's iteration 15 (after its checkpoint at 10). Each trial the driver had seen at step s must end with
    a checkpoint at or after s registered in Ray's state (here 20 for that trial: Ray's own first SIGINT
    would stop it at once, at 10). The printed command finishes the sweep, each trial in its one MLflow run.
    """
    name, storage = "ctrl-c", (tmp_path / "rr").resolve()
    experiment_dir, db = storage / name, tmp_path / "mlflow.db"
    proc = start_cli(["disentangle", "--quick", "--iterations", "30", *TINY_SWEEP, "--set", "eval_every=30",
                      "--data-dir", dsprites_npz, "--address", ray_address, "--storage", storage, "--name", name],
                     tmp_path)
    try:
        deadline = time.monotonic() + 240
        while 15 not in (seen := _logged_steps(db)).values() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and 15 in seen.values(), f"no trial at iteration 15 before the driver ended: {seen}"
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=180)
    finally:
        stop_group(proc)
        for stream in proc.logs:
            stream.close()
    out = (tmp_path / "driver.out").read_text()
    assert code == 130, out[-3000:] + (tmp_path / "driver.err").read_text()[-3000:]
    resume = shlex.join(["python", "-m", "study.run", "disentangle", "--resume", "--name", name, "--storage",
                         str(storage), "--address", ray_address])
    assert out.rstrip().splitlines()[-1].strip() == resume
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(name)
    status = {run.info.run_name: run.info.status  # the run name is the trial's folder name
              for run in client.search_runs([experiment.experiment_id], "tags.run_kind = 'trial'")}
    assert "KILLED" in status.values() and set(status.values()) <= {"KILLED", "FINISHED"}, status
    registered = _registered_iterations(experiment_dir)
    for trial, step in seen.items():
        assert registered.get(trial, 0) >= step, (seen, registered)

    resumed = run_cli(shlex.split(resume)[3:], cwd=tmp_path, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "2 of 2 trials finished" in resumed.stdout
    runs = client.search_runs([experiment.experiment_id], "tags.run_kind = 'trial'")
    assert len(runs) == 2 and len({run.data.tags["trial_id"] for run in runs}) == 2
    for run in runs:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "recon_loss")]
        assert steps == [5, 10, 15, 20, 25, 30]  # each report once: nothing replayed after the resume
    sweeps = client.search_runs([experiment.experiment_id], "tags.run_kind = 'sweep'")
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"


def test_a_large_sweep_lists_its_best_trials_with_links(tmp_path, capsys):
    """Eleven trial runs (> 10): the best 5 by the objective, best first, each with its run's UI link."""
    from study.summary import print_top_trials, run_url, ui_base

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("big")
    values = [0.31, 0.77, 0.05, 0.64, 0.90, 0.12, 0.58, 0.83, 0.27, 0.49, 0.71]
    ids = {}
    for index, value in enumerate(values):
        run = client.create_run(experiment_id, run_name=f"trial{index:02d}", tags={"run_kind": "trial"})
        client.log_metric(run.info.run_id, "disentanglement", value)
        ids[f"trial{index:02d}"] = run.info.run_id
    print_top_trials(uri, "big", "disentanglement", "max")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"the best 5 of 11 trials by disentanglement (max) in MLflow; start its UI with: "
                        f"mlflow ui --backend-store-uri {uri}")
    best = sorted(ids, key=lambda name: -values[int(name[5:])])[:5]
    assert [line.split()[0] for line in lines[1:]] == best
    assert lines[1].endswith(f"run {ids[best[0]]}  http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/"
                             f"{ids[best[0]]}")
    # a tracking server is its own UI: the links point at it, and no `mlflow ui` is needed
    assert ui_base("http://mlflow.lab:5000") == ("http://mlflow.lab:5000", None)
    assert run_url("http://mlflow.lab:5000/", "3", "abc") == "http://mlflow.lab:5000/#/experiments/3/runs/abc"
