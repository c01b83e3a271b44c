"""The "Ablations" section: re-scores of finished trials (``python -m study.evaluate``) against their own evaluation.

A re-score is a child run of a trial run (``run_kind=evaluation``, ``mlflow.parentRunId`` = the trial,
``evaluation_settings`` = the JSON of the settings it changed) holding the training-time evaluation's metric
names. The default setting of a trial is the setting it was trained and evaluated with; its numbers are the
trial run's final metrics. So every re-score gives a paired difference Δ = re-score − trial on the same weights,
and model variance between seeds cancels from Δ as far as it can.

Per data set, one row per setting (the same ``evaluation_settings`` across the data set's trials): each metric's
mean over the re-scored trials, Δ's mean, and Δ's interval over seeds. Trials of one seed (e.g. the 15 MVTec
categories of seed 1) are averaged first, so the interval is over seeds (``analysis.stats.seed_interval``: 95 %
bootstrap for n ≥ 3 seeds, min–max for 2, none for 1), which is the variation a reader can expect from
retraining. The report said the ReLU and L2 switches "barely affected" the results; Δ says by how much.

Metrics: pixel AUROC and every IoU definition (pooled ``best_iou``, the report's ``best_iou_seed``, the
per-batch mean ``best_iou_per_batch``), MVTec's ``_no_good`` pair, and for MNIST the pasted set's
(``pixel_auroc_pasted``, ``best_iou_pasted``, the intensity baseline ``baseline_intensity_pixel_auroc_pasted``)
and ``image_auroc`` — whichever of them the runs logged.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from analysis.document import Section, TableItem
from analysis.stats import number, seed_interval
from analysis.store import METRIC

METRICS = ("pixel_auroc", "best_iou", "best_iou_seed", "best_iou_per_batch", "pixel_auroc_no_good",
           "best_iou_no_good", "image_auroc", "pixel_auroc_pasted", "best_iou_pasted",
           "baseline_intensity_pixel_auroc_pasted")
NAMES = {"mnist": "MNIST", "ucsd": "UCSD Ped1", "mvtec": "MVTec-AD"}


def setting_label(settings_json: str | None) -> str:
    """``activation=relu, normalize_grads=none`` from the ``evaluation_settings`` tag; "as trained" for {}."""
    try:
        settings = json.loads(settings_json or "{}")
    except json.JSONDecodeError:
        return str(settings_json)
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "as trained"


def evaluation_rows(client, experiment_ids: list[str], trials: pd.DataFrame) -> pd.DataFrame:
    """One row per FINISHED re-score of a trial in ``trials``: dataset, seed, parent, setting, its metrics and
    the parent's (``parent:<metric>``)."""
    if trials.empty or not experiment_ids:
        return pd.DataFrame()
    parents = trials.set_index("run_id")
    rows = []
    for experiment_id in dict.fromkeys(experiment_ids):
        token = None
        while True:
            page = client.search_runs([experiment_id], "tags.run_kind = 'evaluation' and attributes.status = "
                                      "'FINISHED'", max_results=1000, page_token=token)
            for run in page:
                parent_id = run.data.tags.get("mlflow.parentRunId")
                if parent_id not in parents.index:
                    continue  # its trial is not among the selected ones (quick, unfinished, other data)
                parent = parents.loc[parent_id]
                row = {"run_id": run.info.run_id, "parent": parent_id, "dataset": parent.get("dataset"),
                       "seed": parent.get("seed"), "setting": setting_label(run.data.tags.get("evaluation_settings"))}
                for metric in METRICS:
                    row[metric] = run.data.metrics.get(metric, math.nan)
                    row["parent:" + metric] = parent.get(METRIC + metric, math.nan)
                rows.append(row)
            token = page.token
            if not token:
                break
    return pd.DataFrame(rows)


def ablation_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per setting of one data set: n trials, n seeds, and per metric ``<m>`` (mean), ``<m>_delta`` (mean Δ over
    trials), ``<m>_delta_low``/``_high``/``_kind`` (Δ's interval over the seeds' mean Δ)."""
    out = []
    metrics = [m for m in METRICS if rows[m].notna().any()]
    default = {m: rows.drop_duplicates("parent")["parent:" + m].mean() for m in metrics}
    out.append({"setting": "default (as trained)", "trials": rows["parent"].nunique(),
                "seeds": rows.drop_duplicates("parent")["seed"].nunique(),
                **{m: default[m] for m in metrics}})
    for setting, part in rows.groupby("setting", sort=False):
        row = {"setting": setting, "trials": part["parent"].nunique(), "seeds": part["seed"].nunique()}
        for m in metrics:
            delta = part[m] - part["parent:" + m]
            row[m] = part[m].mean()
            row[m + "_delta"] = delta.mean()
            per_seed = delta.groupby(part["seed"]).mean().dropna()
            row[m + "_delta_low"], row[m + "_delta_high"], row[m + "_delta_kind"] = seed_interval(per_seed.tolist())
        out.append(row)
    return pd.DataFrame(out)


def _signed(value: float) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:+.3f}"


def display_table(data: pd.DataFrame) -> pd.DataFrame:
    metrics = [m for m in METRICS if m in data]
    shown = data[["setting", "trials", "seeds"]].copy()
    for m in metrics:
        cells = []
        for _, row in data.iterrows():
            text = number(row[m], 3)
            if m + "_delta" in data and pd.notna(row.get(m + "_delta")):
                low, high = row[m + "_delta_low"], row[m + "_delta_high"]
                interval = (f" [{_signed(low)}, {_signed(high)}] ({row[m + '_delta_kind']})"
                            if np.isfinite(low) else f" ({row[m + '_delta_kind']})")
                text += f" (Δ {_signed(row[m + '_delta'])}{interval})"
            cells.append(text)
        shown[m] = cells
    return shown


def section(client, runs: pd.DataFrame, experiment_ids: list[str]) -> Section | None:
    """The section, or None when no selected trial has been re-scored."""
    anomaly = runs[runs["kind"] == "anomaly"] if "kind" in runs else runs.iloc[0:0]
    rows = evaluation_rows(client, experiment_ids, anomaly)
    if rows.empty:
        return None
    items = []
    for dataset in [d for d in ("mnist", "ucsd", "mvtec") if d in set(rows["dataset"])] + sorted(
            set(rows["dataset"]) - {"mnist", "ucsd", "mvtec"}):
        data = ablation_table(rows[rows["dataset"] == dataset])
        items.append(TableItem(f"ablations_{dataset}", display_table(data), data,
                               f"{NAMES.get(dataset, dataset)}: evaluation settings on the same trained weights",
                               "Each setting re-scores every trial's final weights (python -m study.evaluate); "
                               "Δ = re-score − the trial's own evaluation, averaged per seed first, then its mean "
                               "and interval over seeds. The first row is the trials' own evaluation."))
    return Section("Ablations", "Evaluation-time settings (activation, gradient normalisation, layer, score, metric "
                   "definitions) changed on trained weights, with the difference each makes. Best IoUs choose their "
                   "threshold on the test set (optimistic), as in the rest of this report.", items)
