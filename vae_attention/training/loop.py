"""The training loop shared by every study: advance, report, checkpoint, evaluate. It knows nothing of Ray.

A *trainee* advances in units (optimiser iterations for disentanglement, epochs for anomaly models), names
the losses it reports and knows how to evaluate itself; a ``Schedule`` says every how many units to
report, checkpoint and evaluate, and when to stop. The caller passes ``report(metrics, write_checkpoint)``:
``write_checkpoint`` is None or writes the checkpoint files into a directory the caller owns (the Ray
adapter hands it a temp dir and reports it as a ``tune.Checkpoint``). Checkpoint and eval cadences are
multiples of the report cadence, so a restored run never has a half-filled report window.

A checkpoint directory holds ``state.pt`` (everything to continue bit-identically on CPU),
``metrics.json``, after evaluations ``figures/*`` (PNGs, GIFs), and in the final one ``vae.pt`` (model weights).
Also here: ``MetricWindow`` (the per-report means every trainee keeps) and ``default_device``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from vae_attention.errors import ConfigError, StudyError, TrainingDiverged

STATE_FILE = "state.pt"
WEIGHTS_FILE = "vae.pt"
METRICS_FILE = "metrics.json"
FIGURES_DIR = "figures"

WriteCheckpoint = Callable[[Path], None]
Figures = Path | Sequence[Path] | None  # what ``Trainee.evaluate`` wrote: one figure file, several, or none
Report = Callable[[dict[str, Any], "WriteCheckpoint | None"], None]


def rate_metric(step_key: str) -> str:
    """Name of the training-speed metric of every report: units per wall-clock second (``iterations_per_s``,
    ``epochs_per_s``). The MLflow callback reads its history to find the last step a run logged."""
    return f"{step_key}s_per_s"


@dataclass(frozen=True)
class Schedule:
    """When the loop stops (``total`` units) and every how many units it reports, checkpoints, evaluates.

    Users set these through their study's config (``iterations``/``epochs``, ``report_every``, …), which
    builds its ``schedule`` and validates it with ``check_cadences`` under the user-facing names.
    """

    total: int
    report_every: int
    checkpoint_every: int
    eval_every: int


class Trainee(Protocol):
    step_key: str  # "iteration" or "epoch": the MLflow step of every report
    # Losses among the window means: checked after every report, a non-finite one means the run diverged
    loss_keys: tuple[str, ...]

    @property
    def progress(self) -> int: ...  # units done so far

    def advance(self) -> None: ...  # one unit

    def pop_window(self) -> dict[str, float]: ...  # metric means since the last report

    # metrics and the figure files it wrote into scratch_dir (one path, a list of paths, or None)
    def evaluate(self, scratch_dir: Path) -> tuple[dict[str, float], Figures]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def weights(self) -> dict[str, torch.Tensor]: ...

    def load(self, path: Path) -> None: ...

    # Optional: a trainee may also have a ``finished`` property (bool) that ends the run before ``total``
    # (early stopping); the unit that sets it is then treated as the final one. It must be restored by
    # ``load`` so a resumed run agrees. Read with ``_finished`` (trainees without it never finish early).


def _finished(trainee: Trainee) -> bool:
    return bool(getattr(trainee, "finished", False))


def check_cadences(schedule: Schedule, total_name: str) -> None:
    """Positive cadences, with checkpoints and evaluations on report boundaries."""
    if schedule.total <= 0:
        raise ConfigError(f"{total_name} must be > 0, got {schedule.total}")
    for name in ("report_every", "checkpoint_every", "eval_every"):
        if getattr(schedule, name) <= 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(schedule, name)}")
    for name in ("checkpoint_every", "eval_every"):
        if getattr(schedule, name) % schedule.report_every:
            raise ConfigError(f"{name}={getattr(schedule, name)} must be a multiple of report_every="
                              f"{schedule.report_every} (set it with --set report_every=N)")


def check_finite(metrics: dict[str, Any], loss_keys: tuple[str, ...], step_key: str, step: int) -> None:
    """Raise ``TrainingDiverged`` naming the first of ``loss_keys`` in ``metrics`` that is NaN or infinite."""
    for name in loss_keys:
        value = metrics.get(name)
        if value is not None and not math.isfinite(value):
            raise TrainingDiverged(f"training diverged: {name} = {value} is not finite at {step_key} {step}; "
                                   "lower lr (or gamma/lambda_ad) and start a new sweep")


class MetricWindow:
    """Running sums of per-step metrics between two reports; ``means()`` then ``reset()``."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] += value
            self.counts[key] += 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()

    def pop(self) -> dict[str, float]:
        """The means, then a fresh window."""
        means = self.means()
        self.reset()
        return means

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        self.sums.update(state["sums"])
        self.counts.update(state["counts"])


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def figure_files(figures: Figures) -> list[Path]:
    """``Trainee.evaluate``'s figures as a list of paths (a single path or None are accepted too)."""
    if figures is None:
        return []
    if isinstance(figures, (str, os.PathLike)):
        return [Path(figures)]
    return [Path(f) for f in figures]


def checkpoint_writer(trainee: Trainee, metrics: dict[str, Any], figures: Figures, final: bool) -> WriteCheckpoint:
    """Write the checkpoint files; every figure file of the evaluation is moved into ``figures/``."""
    files = figure_files(figures)

    def write(directory: Path) -> None:
        directory = Path(directory)
        _atomic_torch_save(trainee.state_dict(), directory / STATE_FILE)
        if final:  # on CPU, so the artifact loads on any machine
            weights = {k: v.detach().cpu() for k, v in trainee.weights().items()}
            _atomic_torch_save(weights, directory / WEIGHTS_FILE)
        if files:
            (directory / FIGURES_DIR).mkdir(exist_ok=True)
        for figure in files:
            os.replace(figure, directory / FIGURES_DIR / figure.name)
        (directory / METRICS_FILE).write_text(json.dumps({**metrics, "final": final}, sort_keys=True))

    return write


def run_loop(trainee: Trainee, schedule: Schedule, report: Report, scratch_dir: Path) -> None:
    """Advance ``trainee`` to ``schedule.total``; ``scratch_dir`` holds figures until they are checkpointed."""
    seconds, units = 0.0, 0
    key = trainee.step_key
    while trainee.progress < schedule.total and not _finished(trainee):
        tick = time.perf_counter()
        trainee.advance()
        seconds += time.perf_counter() - tick
        units += 1
        done = trainee.progress
        final = done == schedule.total or _finished(trainee)
        if done % schedule.report_every and not final:
            continue
        metrics: dict[str, Any] = trainee.pop_window()
        # Before evaluating, reporting or checkpointing: a diverged run must not leave a NaN checkpoint
        # (a retry would resume from it) nor NaN points in its curves.
        check_finite(metrics, trainee.loss_keys, key, done)
        metrics[key] = done
        metrics[rate_metric(key)] = units / seconds  # training only: evaluation time is not counted
        seconds, units = 0.0, 0
        figures = None
        evaluated = final or done % schedule.eval_every == 0
        if evaluated:
            extra, figures = trainee.evaluate(Path(scratch_dir))
            metrics.update(extra)
        write = None
        if evaluated or done % schedule.checkpoint_every == 0:
            write = checkpoint_writer(trainee, metrics, figures, final)
        report(metrics, write)


def load_checkpoint(trainee: Trainee, directory: Path) -> None:
    """Restore ``trainee`` from a checkpoint directory written by ``checkpoint_writer``."""
    path = Path(directory) / STATE_FILE
    try:
        trainee.load(path)
    except FileNotFoundError:
        raise StudyError(f"checkpoint {directory} has no {STATE_FILE}; it is not a checkpoint of this study") from None
    # A torn zip gives RuntimeError/EOFError; bytes that are no torch archive at all reach the weights-only
    # unpickler, which raises UnpicklingError (not a subclass of any of the others).
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError) as err:
        raise StudyError(f"checkpoint {path} is unreadable ({type(err).__name__}); delete it to fall back") from None
