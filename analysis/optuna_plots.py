"""Optuna's own views of an Optuna sweep: parameter importances and contour plots, from its persisted study.

A sweep run with ``--search optuna`` keeps its Optuna study (named after the sweep) in an RDB storage and logs
its URL as the param ``search_storage`` of the sweep's parent run (``run_kind=sweep``, ``study.sweep_run``);
the param ``search_algorithm`` says ``optuna``. Every COMPLETE Optuna trial is one sampled configuration, its
value the mean over the seeds of the objective (``study.search``). The figures are Optuna's matplotlib ones:

- importances (``plot_param_importances``): fANOVA (Hutter, Hoos & Leyton-Brown, ICML 2014): the share of the
  objective's variance over the sampled space that each parameter explains, from a random forest fit to the
  complete trials (Optuna's default evaluator; seeded so a report is reproducible). With few trials it is a
  rough guide, not a measurement.
- contour (``plot_contour``): the objective over each pair of sampled parameters, interpolated between the
  trials (dots).

A Pareto (multi-objective) study is shown for its first objective. A study that cannot be read (the storage
lives on another machine, was deleted, or the sweep predates the persisted study) gives a visible note.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from urllib.parse import unquote

import matplotlib.pyplot as plt
from mlflow import MlflowClient

from analysis import plotting
from analysis.document import FigureItem, Section

IMPORTANCE_SEED = 0  # fANOVA's forest is random; a fixed seed makes the report reproducible


def sweep_storages(client: MlflowClient, sweeps) -> list[tuple[str, str | None]]:
    """``(sweep name, storage URL or None)`` for each sweep whose parent run says it searched with Optuna."""
    found = []
    for sweep in sweeps:
        parents = client.search_runs([sweep.experiment_id], "tags.run_kind = 'sweep'", max_results=1)
        if not parents:
            continue
        params = parents[0].data.params
        # sweeps started before --search existed said search_scheduler=optuna and kept no study
        if "optuna" in (params.get("search_algorithm"), params.get("search_scheduler")):
            storage = params.get("search_storage")
            found.append((sweep.name, None if storage in (None, "None", "") else storage))
    return found


def _sqlite_missing(url: str) -> bool:
    return url.startswith("sqlite:///") and not Path(unquote(url.removeprefix("sqlite:///"))).is_file()


def _figure_of(plotted):
    return plotted.flat[0].figure if hasattr(plotted, "flat") else plotted.figure


def study_items(name: str, url: str | None, out: Path, fmt: str) -> tuple[list[FigureItem], str]:
    """The importance and contour figures of the study ``name`` at ``url``, and a note (empty if none)."""
    if url is None:
        return [], f"{name}: an Optuna sweep of an earlier version, which kept no Optuna study to plot."
    if _sqlite_missing(url):
        return [], f"{name}: no Optuna study at {url} (the file is absent here); no importance or contour plots."
    import optuna  # imported here: ~1 s, and only a report with an Optuna sweep needs it
    from optuna.visualization import matplotlib as optuna_plt

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except Exception as err:  # any unreadable storage is the same note for the reader
        return [], f"{name}: the Optuna study at {url} could not be read ({type(err).__name__})."
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    searched = sorted({p for t in complete for p in t.params})
    if len(complete) < 2 or not searched:
        return [], f"{name}: {len(complete)} complete Optuna trial(s); importances need at least 2."
    metric = (study.metric_names or ["objective"])[0]
    first = {"target_name": metric} if len(study.directions) == 1 else {"target": lambda t: t.values[0],
                                                                          "target_name": metric}
    stem = f"optuna_{name}".replace("/", "_")
    how = (f"{len(complete)} complete configurations of study {name!r} ({url}); each value is the seed mean of "
           f"{metric}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)
        try:
            fig = _figure_of(optuna_plt.plot_param_importances(study, evaluator=evaluator, **first))
            items = [FigureItem(plotting.save(fig, out, f"{stem}_importance", fmt), f"Optuna: parameter importances "
                                f"({name})", f"fANOVA importance of each sampled parameter for {metric}. {how}")]
            note = ""
        except RuntimeError:  # fANOVA's "zero total variance": every trial has the same value
            items, note = [], f"{name}: every complete trial has the same {metric}, so no parameter explains any of it."
        if len(searched) >= 2:
            fig = _figure_of(optuna_plt.plot_contour(study, **first))
            fig.set_size_inches(3.2 * len(searched), 3.0 * len(searched))
            items.append(FigureItem(plotting.save(fig, out, f"{stem}_contour", fmt), f"Optuna: contours ({name})",
                                    f"{metric} over each pair of sampled parameters, interpolated between the "
                                    f"trials (dots). {how}"))
    plt.close("all")
    return items, note


def section(client: MlflowClient, sweeps, out: Path, fmt: str) -> Section | None:
    """The report's Optuna section, or None when no sweep searched with Optuna."""
    storages = sweep_storages(client, sweeps)
    if not storages:
        return None
    items, notes = [], []
    for name, url in storages:
        found, note = study_items(name, url, out, fmt)
        items += found
        notes += [note] if note else []
    text = ("Optuna's own views of each Optuna sweep's persisted study (open it live with `optuna-dashboard "
            "<storage URL>`).")
    return Section("Optuna: parameter importances and contours", "\n\n".join([text, *(f"- {n}" for n in notes)]),
                   items)
