"""A trial whose loss becomes NaN/inf stops with a one-line reason; the others finish; the sweep exits 1.

Plus fast checks of the pieces: the loop's finiteness check (no report, no checkpoint of the diverged
window) and the one-line reason the MLflow tag and the summary take from what Ray keeps of an error.
"""

import math
from pathlib import Path

import pytest
from fault_tools import steps, trial_runs
from helpers.processes import TINY_SWEEP, run_cli

from study.tracking import error_reason
from vae_attention.errors import ConfigError, TrainingDiverged
from vae_attention.training.loop import run_loop


def test_diverging_trial_fails_with_its_reason_and_the_others_finish(ray_address, mlflow_db, tmp_path):
    """λ = ∞ blows up AD-FactorVAE's loss at its first step; FactorVAE has no L_AD term and is unaffected.

    ``--max-failures 0``: a retry would diverge again at the same step (on CPU a trial continues
    bit-identically from its checkpoint, and here there is none before the divergence), so retries only
    cost time. Checkpoints are due at every report, so a diverged window that were checkpointed would show.
    """
    name, storage, iterations = "diverge", tmp_path / "rr", 10
    proc = run_cli(["disentangle", "--quick", "--iterations", iterations, *TINY_SWEEP, "--set", "checkpoint_every=5",
                    "--set", f"eval_every={iterations}", "--set", "lambda_ad=inf", "--max-failures", "0",
                    "--address", ray_address, "--storage", storage, "--name", name], cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 of 2 trials finished" in proc.stdout

    client, runs = trial_runs(mlflow_db, name)
    by_model = {run.data.params["model"]: run for run in runs}
    assert len(runs) == 2 and by_model.keys() == {"factorvae", "ad_factorvae"}
    failed, finished = by_model["ad_factorvae"], by_model["factorvae"]

    reason = failed.data.tags["error"]
    assert failed.info.status == "FAILED"
    assert reason.startswith("training diverged: ") and "not finite at iteration 5" in reason, reason
    assert "lower lr" in reason and "\n" not in reason and "Traceback" not in reason
    assert steps(client, failed, "recon_loss") == []  # the non-finite window was never reported
    trial_dir = next((storage / name).glob("adfvae_*"))
    assert not list(trial_dir.glob("checkpoint_*"))  # nor checkpointed

    failed_lines = [line for line in proc.stdout.splitlines() if line.startswith("FAILED ")]
    error_file = trial_dir / "error.txt"  # Ray's traceback of each failure, named on the FAILED line
    assert failed_lines == [f"FAILED {trial_dir.name}: {reason} (traceback: {error_file})"]
    assert "TrainingDiverged" in error_file.read_text()

    assert finished.info.status == "FINISHED" and "error" not in finished.data.tags
    assert steps(client, finished, "recon_loss") == [5, 10]
    assert all(math.isfinite(v) for v in finished.data.metrics.values())


class _Trainee:
    """A stand-in trainee whose loss turns NaN at unit ``nan_at`` (units are epochs, as for anomaly models)."""

    step_key = "epoch"
    loss_keys = ("loss", "recon_loss", "kld")

    def __init__(self, nan_at):
        self.progress, self.nan_at = 0, nan_at

    def advance(self):
        self.progress += 1

    def pop_window(self):
        loss = math.nan if self.progress >= self.nan_at else 1.0 / self.progress
        return {"loss": loss, "recon_loss": 0.5, "kld": 0.1}

    def evaluate(self, scratch_dir):
        raise AssertionError("a diverged window must not be evaluated")

    def state_dict(self):
        return {"epoch": self.progress}

    def weights(self):
        return {}


def test_loop_stops_before_reporting_or_checkpointing_a_non_finite_window(tmp_path):
    class Schedule:
        total, report_every, checkpoint_every, eval_every = 10, 1, 1, 10

    reports = []
    with pytest.raises(TrainingDiverged) as raised:
        run_loop(_Trainee(nan_at=3), Schedule, lambda metrics, write: reports.append((metrics, write)), tmp_path)
    assert [m["epoch"] for m, _ in reports] == [1, 2]  # epoch 3 was neither reported nor checkpointed
    message = str(raised.value)
    assert message == ("training diverged: loss = nan is not finite at epoch 3; lower lr (or gamma/lambda_ad) "
                       "and start a new sweep")


def _ray_task_error(cause, traceback_text):
    from ray.exceptions import RayTaskError

    return RayTaskError("ImplicitFunc.train", traceback_text, cause, proctitle="ray::ImplicitFunc.train()",
                        pid=1, ip="127.0.0.1")


@pytest.mark.parametrize("make_error, expected", [
    # what Trial.get_pickled_error() returns: the trainable's exception inside a RayTaskError
    (lambda: _ray_task_error(TrainingDiverged("training diverged: kld = inf ..."), "Traceback ...\nx: y"),
     "training diverged: kld = inf ..."),
    # ... or its dual instance (RayTaskError(TrainingDiverged)), as ray.get raises it
    (lambda: _ray_task_error(ConfigError("checkpoint was written with another config (lr: 1 -> 2)"), "tb")
     .as_instanceof_cause(), "checkpoint was written with another config (lr: 1 -> 2)"),
    # a non-StudyError keeps its type name; a multi-line message keeps its first line
    (lambda: _ray_task_error(OSError(28, "No space left on device"), "tb"),
     "OSError: [Errno 28] No space left on device"),
    (lambda: _ray_task_error(RuntimeError("first line\nsecond line"), "tb"), "RuntimeError: first line"),
    # the text of error.txt when nothing could be pickled: the traceback's last line
    (lambda: "Failure # 1 (occurred at 2026)\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
             "vae_attention.errors.TrainingDiverged: training diverged: tc = nan\n", "training diverged: tc = nan"),
    (lambda: "Failure # 1\nTraceback (most recent call last):\nray.exceptions.RayActorError: The actor died.\n",
     "RayActorError: The actor died."),
    (lambda: None, "trial errored"),
])
def test_error_reason_is_one_line(make_error, expected):
    assert error_reason(make_error()) == expected


def test_error_reason_of_a_dead_worker_names_it():
    from ray.exceptions import RayActorError

    reason = error_reason(RayActorError(error_msg="The actor died unexpectedly before finishing this task.\n\t"
                                                  "class_name: ImplicitFunc\n\tpid: 1234"))
    assert reason == "RayActorError: The actor died unexpectedly before finishing this task."
    assert len(error_reason(OSError("x" * 10_000))) <= 500


def test_mlflow_error_tag_comes_from_the_driver_copy_of_the_error(tmp_path):
    """``_error_line`` reads the pickled error Ray has just written (or the text file) for the callback."""
    import ray.cloudpickle as cloudpickle

    from study.tracking import _error_line

    class Trial:
        pickled_error_file = str(tmp_path / "error.pkl")
        error_file = str(tmp_path / "error.txt")

    Path(Trial.pickled_error_file).write_bytes(
        cloudpickle.dumps(_ray_task_error(TrainingDiverged("training diverged: d_loss = nan"), "tb")))
    Path(Trial.error_file).write_text("Traceback ...\nvae_attention.errors.TrainingDiverged: from the text\n")
    assert _error_line(Trial) == "training diverged: d_loss = nan"
    Path(Trial.pickled_error_file).write_bytes(b"")  # truncated (a full disk): fall back to the text
    assert _error_line(Trial) == "from the text"
    Path(Trial.error_file).unlink()
    assert _error_line(Trial) == "trial errored"
