"""After a sweep: what happened to each trial, in a few lines, and the exit code that says it."""

from __future__ import annotations

import shutil
from pathlib import Path

from search_spaces.common import PARAMS_KEY


def free_space_note(path: str) -> str:
    """For a local storage path, the free space left there (a full disk is the usual cause of I/O errors)."""
    if "://" in path:
        return ""
    existing = next((p for p in (Path(path), *Path(path).parents) if p.exists()), None)
    if existing is None:
        return ""
    free = shutil.disk_usage(existing).free
    return f" (free space under --storage: {free / 2**20:.1f} MiB)"


def summarise(results, total_key: str, step_key: str, stopped_early_ok: bool = False) -> int:
    """Print what happened; 0 only if every trial finished (or, under ASHA, was stopped early on purpose)."""
    # imported here: study.tracking imports mlflow (seconds), which the CLI's start-up never needs
    from study.tracking import error_reason

    failed, unfinished, finished, stopped, converged = [], [], 0, 0, 0
    for result in results:
        params = (result.config or {}).get(PARAMS_KEY, {})
        reached = (result.metrics or {}).get(step_key)
        # the trial's folder name (model, γ/λ/β, seed, trial id) names it; trial_id alone does not
        label = Path(result.path).name if result.path else (result.metrics or {}).get("trial_id", "?")
        if result.error is not None:  # Ray's error is a traceback; print the one-line reason
            failed.append(f"{label}: {error_reason(result.error)}")
        elif (result.metrics or {}).get("stopped_early"):  # the trainee's own early stopping (a patience rule)
            converged += 1
        elif reached != params.get(total_key) and stopped_early_ok and reached is not None:
            stopped += 1
        elif reached != params.get(total_key):
            unfinished.append(f"{label}: {step_key} {reached} of {params.get(total_key)}")
        else:
            finished += 1
    print(f"{finished + converged} of {len(results)} trials finished"
          + (f" ({converged} by early stopping)" if converged else "")
          + (f", {stopped} stopped early by ASHA" if stopped else ""))
    for line in failed:
        print(f"FAILED {line}")
    for line in unfinished:
        print(f"UNFINISHED {line}")
    return 0 if finished + converged + stopped == len(results) else 1
