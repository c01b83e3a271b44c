"""One Ctrl-C: every running trial stops at its next checkpoint, then the sweep ends resumable (exit 130).

Ray Tune's own first SIGINT (``ray.tune.tune._setup_signal_catching``, Ray 2.60) ends the tuning loop at
once: it saves the experiment state and stops every trial where it is, so each loses what it trained since
its last checkpoint (up to ``checkpoint_every`` iterations: hours for a full sweep). ``StopAtCheckpoint``
defers that stop instead of replacing it. Installed in ``setup`` (after Tune has installed its handler),
it takes SIGINT over:

1. the first SIGINT marks the trials running now; each is awaited until Tune has registered a checkpoint
   of it (``on_checkpoint``) or it has ended. Then the callback calls Tune's own handler (the one Tune
   registers for SIGUSR1 as well), so Tune saves its state and stops the trials as usual: a trial that
   checkpointed earlier may have run on while waiting, and resumes from its newest checkpoint.
2. a second SIGINT calls Tune's handler at once (Tune's immediate stop, as without this callback);
3. a further one, while Tune saves its state, is Python's KeyboardInterrupt (Tune's "press Ctrl-C again to
   skip" rule): the sweep then resumes from the state Tune saved last (it saves every few seconds).

The callback is pickled with the sweep (``tuner.pkl``), so ``--resume`` restores it; ``interrupted()``
tells ``study.launch`` afterwards whether the loop ended because of a SIGINT.
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

from ray.tune import Callback

if TYPE_CHECKING:
    from study.plan import SweepPlan

REMIND_EVERY_S = 60.0  # while waiting for slow checkpoints, say which trials are still awaited
# What Tune logs after a stop that study.launch says better: the CLI's resume command replaces Tune's
# `Tuner.restore(...)` hint, and unfinished trials are the point of an interruption.
TUNE_LINES_REPLACED = ("Trials did not complete", "Experiment has been interrupted")


class _HideTuneResumeHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TUNE_LINES_REPLACED)


class _State:
    """Per driver process (the callback instance is Tune's copy; launch reads this)."""

    requested = 0  # SIGINTs received during the tuning loop
    stopped = False  # Tune's stop handler was called


STATE = _State()


def interrupted() -> bool:
    return STATE.requested > 0


def reset() -> None:
    STATE.requested, STATE.stopped = 0, False


def resume_command(plan: SweepPlan) -> str:
    """The exact command that continues ``plan``'s sweep (its settings come back from the saved state)."""
    words = ["python", "-m", "study.run", plan.kind, "--resume", "--name", plan.name, "--storage", plan.storage]
    if plan.address:
        words += ["--address", plan.address]
    return shlex.join(words)


class StopAtCheckpoint(Callback):
    """Tune callback: the first SIGINT stops each running trial at its next checkpoint (see the module doc)."""

    def __init__(self, stream=None):
        self.stream = stream
        self._reset()

    def _reset(self) -> None:
        self._awaited: set[str] | None = None  # trial ids still to checkpoint; None until a SIGINT is seen
        self._tune_stop = None  # Tune's handler of SIGUSR1 (and of SIGINT): sets its "interrupted" event
        self._last_remind = 0.0

    def __getstate__(self):
        return {"stream": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def _say(self, text: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(text + "\n")
        stream.flush()

    def setup(self, **info) -> None:
        if threading.current_thread() is not threading.main_thread():  # Ray client mode: keep Tune's handling
            return
        tune_stop = signal.getsignal(signal.SIGUSR1)  # Tune registers it in every tuning loop
        if not callable(tune_stop):
            return
        self._tune_stop = tune_stop
        signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        # a signal handler: only flags and a message; the trials are read in on_step_end
        STATE.requested += 1
        if STATE.requested == 1:
            self._say("\nCtrl-C: each running trial stops at its next checkpoint, then the sweep saves its state "
                      "(Ctrl-C again: stop now, losing what each trial trained since its last checkpoint)")
        elif STATE.requested == 2:
            self._say("Ctrl-C again: stopping now")
            self._stop()
        else:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt

    def _stop(self) -> None:
        if not STATE.stopped:
            STATE.stopped = True
            logging.getLogger("ray.tune.tune").addFilter(_HideTuneResumeHint())
            # Tune: end the loop, save the experiment state, stop the trials; it also puts back the SIGINT
            # handler from before the loop, so a further Ctrl-C skips that last save (Tune's own rule)
            self._tune_stop(signal.SIGINT, None)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        if self._awaited is not None:
            self._awaited.discard(trial.trial_id)

    def on_step_end(self, iteration, trials, **info) -> None:
        if STATE.requested == 0 or STATE.stopped or self._tune_stop is None:
            return
        if self._awaited is None:  # the first step after the SIGINT: the trials running now are awaited
            self._awaited = {t.trial_id for t in trials if t.status == "RUNNING"}
            self._last_remind = time.monotonic()
        running = {t.trial_id for t in trials if t.status == "RUNNING"}
        self._awaited &= running  # ended (finished or failed) trials need no checkpoint
        if not self._awaited:
            self._say("every running trial has checkpointed: saving the sweep's state")
            self._stop()
        elif time.monotonic() - self._last_remind >= REMIND_EVERY_S:
            self._last_remind = time.monotonic()
            names = ", ".join(sorted(str(t) for t in trials if t.trial_id in self._awaited))
            self._say(f"waiting for the next checkpoint of: {names} (Ctrl-C again to stop now)")

    def on_experiment_end(self, trials, **info) -> None:
        if self._tune_stop is not None:  # after the loop a Ctrl-C is an ordinary KeyboardInterrupt
            signal.signal(signal.SIGINT, signal.default_int_handler)
