"""Which trial runs a report may use, and the sentences that say so.

Final numbers come from FINISHED trial runs only. Quick-preset runs are smoke tests (tens of iterations,
shrunken metrics): beside full runs they enter only with ``--include-quick``; sweeps that hold nothing else are
reported with a note saying so (the user named them). Runs on different data (the real dSprites npz vs
the generated stand-in, or two MVTec folders) are never pooled silently: a table group with more than one
``data_source`` is refused unless ``--allow-mixed-data`` is given, and then the data source becomes part of
the configuration key, so seeds of different data never share a mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from analysis import AnalysisError
from analysis.store import Sweep

# Seeds of one configuration: the study's config hash, and never pooled across presets or data.
GROUP = ["config_key", "preset", "data_source"]
QUICK_ONLY_NOTE = ("**Quick-preset runs only.** Sweep(s) {sweeps} hold nothing but quick-preset (smoke-test) runs, "
                   "so they are reported: tens of iterations or a few epochs and shrunken metrics, not comparable "
                   "with published numbers or with full runs.")


@dataclass
class Selection:
    runs: pd.DataFrame  # the runs used, with a ``kind`` (disentangle/anomaly) and ``group`` (table) column
    notes: list[str] = field(default_factory=list)  # what was left out and why, one sentence each
    include_quick: bool = False
    allow_mixed_data: bool = False
    quick_only: bool = False  # the sweeps named hold only quick runs, so they are used without --include-quick


def kind_of(runs: pd.DataFrame) -> pd.Series:
    """``disentangle`` when a run has a ``model`` param, ``anomaly`` when it has a ``dataset`` param, ``rbm`` when
    it has an ``rbm_map`` param (the RBM study's, which has neither)."""
    model = runs["model"] if "model" in runs else pd.Series(None, index=runs.index)
    dataset = runs["dataset"] if "dataset" in runs else pd.Series(None, index=runs.index)
    rbm = runs["rbm_map"] if "rbm_map" in runs else pd.Series(None, index=runs.index)
    return pd.Series(["disentangle" if pd.notna(m) else "anomaly" if pd.notna(d) else "rbm" if pd.notna(r)
                      else "unknown" for m, d, r in zip(model, dataset, rbm, strict=True)], index=runs.index)


def table_group(runs: pd.DataFrame) -> pd.Series:
    """Runs that share tables: all disentangle runs; anomaly runs per data set."""
    dataset = runs["dataset"] if "dataset" in runs else pd.Series(None, index=runs.index)
    return pd.Series([k if k != "anomaly" else f"anomaly:{d}" for k, d in zip(runs["kind"], dataset, strict=True)],
                     index=runs.index)


def _counts(values: pd.Series) -> str:
    return ", ".join(f"{count} {name}" for name, count in values.value_counts().sort_index().items())


def select(sweeps: list[Sweep], include_quick: bool = False, allow_mixed_data: bool = False) -> Selection:
    if not sweeps:
        raise AnalysisError("no sweep given (pass --sweep NAME)")
    notes, used = [], []
    for sweep in sweeps:
        runs = sweep.runs
        if runs.empty:
            raise AnalysisError(f"sweep {sweep.name!r} has no trial runs (no run tagged run_kind=trial)")
        finished = runs[runs["status"] == "FINISHED"]
        if finished.empty:
            raise AnalysisError(f"sweep {sweep.name!r} has no finished trial runs ({_counts(runs['status'])})")
        if len(finished) < len(runs):
            unfinished = runs[runs["status"] != "FINISHED"]
            notes.append(f"Sweep {sweep.name}: {len(unfinished)} unfinished trial run(s) left out "
                         f"({_counts(unfinished['status'])}).")
        used.append(finished)
    # the user named sweeps that hold nothing but quick runs: report those, saying so, rather than refuse
    quick_only = not include_quick and all((finished["preset"] == "quick").all() for finished in used)
    if quick_only:
        notes.insert(0, QUICK_ONLY_NOTE.format(sweeps=", ".join(s.name for s in sweeps)))
    elif not include_quick:
        for i, (sweep, finished) in enumerate(zip(sweeps, used, strict=True)):
            quick = finished["preset"] == "quick"
            if quick.all():
                raise AnalysisError(f"sweep {sweep.name!r} has only quick-preset runs ({len(finished)} finished) "
                                    "and other sweeps have full ones; pass --include-quick to mix them")
            if quick.any():
                notes.append(f"Sweep {sweep.name}: {int(quick.sum())} quick-preset run(s) left out "
                             "(pass --include-quick to include them).")
            used[i] = finished[~quick]
    runs = pd.concat(used, ignore_index=True)
    runs["kind"] = kind_of(runs)
    unknown = runs["kind"] == "unknown"
    if unknown.any():
        notes.append(f"{int(unknown.sum())} trial run(s) with none of the model, dataset, rbm_map params left out.")
        runs = runs[~unknown].reset_index(drop=True)
    runs["group"] = table_group(runs)
    runs = _drop_repeats(runs, notes)
    _check_data(runs, allow_mixed_data)
    return Selection(runs=runs, notes=notes, include_quick=include_quick, allow_mixed_data=allow_mixed_data,
                     quick_only=quick_only)


def _drop_repeats(runs: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Two sweeps that ran the same trial (e.g. ``exp1`` and ``all``) would count one seed twice: keep the
    run that finished last."""
    key = [*GROUP, "seed"] if "seed" in runs else GROUP
    ordered = runs.sort_values("end_time", kind="stable")
    repeated = ordered.duplicated(subset=key, keep="last")
    if repeated.any():
        notes.append(f"{int(repeated.sum())} run(s) repeating a configuration and seed of another sweep left "
                     "out (the later run is used).")
    return ordered[~repeated].sort_index().reset_index(drop=True)


def _check_data(runs: pd.DataFrame, allow_mixed_data: bool) -> None:
    for group, part in runs.groupby("group"):
        sources = sorted(part["data_source"].fillna("unknown").unique())
        if len(sources) > 1 and not allow_mixed_data:
            raise AnalysisError(f"{group} runs use different data sources ({', '.join(sources)}); analyse the "
                                "sweeps separately or pass --allow-mixed-data")


def describe(runs: pd.DataFrame, step_param: str | None = None) -> str:
    """One sentence of what was run: trial and configuration counts, seeds, length, preset, data, sweeps."""
    configs = runs.groupby(GROUP, dropna=False).ngroups
    parts = [f"{len(runs)} finished trial run{'s' * (len(runs) != 1)} ({configs} configuration"
             f"{'s' * (configs != 1)}"]
    if "seed" in runs:
        seeds = sorted(int(s) for s in runs["seed"].dropna().unique())
        parts[-1] += f"; seed{'s' * (len(seeds) != 1)} {', '.join(map(str, seeds))}"
    parts[-1] += ")"
    if step_param and step_param in runs:
        lengths = sorted(int(v) for v in runs[step_param].dropna().unique())
        parts.append(f"{', '.join(f'{v:,}' for v in lengths)} {step_param}")
    parts.append(f"preset {', '.join(sorted(runs['preset'].fillna('unknown').unique()))}")
    parts.append(f"data source {', '.join(short(s) for s in sorted(runs['data_source'].fillna('unknown').unique()))}")
    parts.append(f"sweep{'s' * (runs['sweep'].nunique() != 1)} {', '.join(sorted(runs['sweep'].unique()))}")
    return "; ".join(parts) + "."


def short(source: str) -> str:
    """``npz:<sha256>`` is 68 characters; 12 hex digits identify a file just as well in prose."""
    kind, _, rest = source.partition(":")
    return f"{kind}:{rest[:12]}…" if kind == "npz" and len(rest) > 12 else source
