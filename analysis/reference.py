"""Published numbers our runs are compared with, from the one cited data file ``reference_numbers.csv``.

Sources (the ``source`` column; ``citation`` says where each number was read):

- ``paper``: Liu et al. (2020), as quoted by the reproducibility report (Table 2 "Orig.", UCSD AUROC 0.92);
- ``seed``: the reproducibility report's own results (Table 2 "Ours", UCSD AUROC 0.8731);
- ``seed`` dSprites rows: the final ``metric_score`` stored by the report's code (FACT-2021
  ``results/disent/*/metrics.json``, seeds 1 and 2) per model, γ, λ and iterations;
- ``public_reproduction``: a public reproduction's committed dSprites results, whose metric variant differs
  from ours (see its ``note``): they are shown beside our numbers, never subtracted from them.

Each row names the ``protocol`` it was produced under (none for the public reproduction): a published number is
set beside our runs of that protocol only, and only for our metric of the same definition (``DEFINITIONS``);
runs labelled ``<name>+custom`` never. ``what_differs.csv`` lists each known difference between the paper, the
authors' code and the report's code, and which protocol reproduces which.

The numbers live in the CSV and nowhere else, so a corrected transcription changes every report at once.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

REFERENCE_FILE = Path(__file__).with_name("reference_numbers.csv")
DIFFERENCES_FILE = Path(__file__).with_name("what_differs.csv")
SOURCES = {"paper": "paper (Liu et al. 2020)", "seed": "seed report", "public_reproduction": "public reproduction"}
CATEGORY_NAMES = {"metal_nut": "Metal nut"}  # Table 2 prints "Metal"; the MVTec folder is metal_nut
# (dataset, source, published metric) -> (our metric of the same definition, that definition in words)
DEFINITIONS = {
    ("mvtec", "paper", "pixel_auroc"): ("pixel_auroc", "pixel AUROC, all test images"),
    ("mvtec", "seed", "pixel_auroc"): ("pixel_auroc_no_good", "pixel AUROC, defective test images only"),
    ("mvtec", "paper", "best_iou"): ("best_iou", "best IoU, pooled foreground Jaccard, all test images"),
    ("mvtec", "seed", "best_iou"): ("best_iou_seed", "best IoU, macro bg/fg mean per batch (PL iou), defective only"),
    ("ucsd", "paper", "pixel_auroc"): ("pixel_auroc", "pixel AUROC, frames of the clips with masks"),
    ("ucsd", "seed", "pixel_auroc"): ("pixel_auroc", "pixel AUROC, frames of the clips with masks"),
    ("dsprites", "seed", "disentanglement_seed"): ("disentanglement_seed", "the report's FactorVAE-metric variant "
                                                                           "(L = 100, 800 votes)"),
}


@lru_cache(maxsize=1)
def load() -> pd.DataFrame:
    frame = pd.read_csv(REFERENCE_FILE, dtype={"category": str, "model": str, "note": str, "protocol": str})
    frame["category"] = frame["category"].fillna("")
    frame["protocol"] = frame["protocol"].fillna("")
    return frame


def comparable(run_protocol, source: str) -> bool:
    """Whether a run of ``run_protocol`` may sit beside ``source``'s number: the same protocol, never ``+custom``."""
    return isinstance(run_protocol, str) and run_protocol == source and source in ("paper", "seed")


@lru_cache(maxsize=1)
def differences() -> pd.DataFrame:
    """The "what differs" table: study, aspect, paper, authors, seed, settings, reproduced_by."""
    return pd.read_csv(DIFFERENCES_FILE, dtype=str).fillna("")


def category_name(category: str) -> str:
    return CATEGORY_NAMES.get(category, category.replace("_", " ").capitalize())


def mvtec(metric: str) -> pd.DataFrame:
    """Per MVTec category: the paper's and the seed report's value of ``metric`` (pixel_auroc or best_iou)."""
    rows = load()
    rows = rows[(rows["dataset"] == "mvtec") & (rows["metric"] == metric)]
    table = rows.pivot(index="category", columns="source", values="value")
    return table.reindex(columns=["paper", "seed"])


def ucsd_pixel_auroc() -> dict[str, float]:
    rows = load()
    rows = rows[(rows["dataset"] == "ucsd") & (rows["metric"] == "pixel_auroc")]
    return dict(zip(rows["source"], rows["value"], strict=True))


def dsprites() -> pd.DataFrame:
    """The public reproduction's rows: model, γ, λ, metric, value, sd and the note on its metric variant."""
    rows = load()
    return rows[(rows["dataset"] == "dsprites") & (rows["source"] == "public_reproduction")].reset_index(drop=True)


def seed_dsprites() -> pd.DataFrame:
    """The report's stored dSprites results: model, γ, λ, iterations, value (mean of 2 seeds), sd, n."""
    rows = load()
    return rows[(rows["dataset"] == "dsprites") & (rows["source"] == "seed")].reset_index(drop=True)


def citations(dataset: str | None = None) -> dict[str, str]:
    """One citation line per source (of ``dataset``'s rows, when given), for the text beside a table."""
    rows = load() if dataset is None else load()[load()["dataset"] == dataset]
    return {source: "; ".join(sorted(set(part["citation"]))) for source, part in rows.groupby("source")}
