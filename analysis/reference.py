"""Published numbers our runs are compared with, from the one cited data file ``reference_numbers.csv``.

Sources (the ``source`` column; ``citation`` says where each number was read):

- ``paper``: Liu et al. (2020), as quoted by the reproducibility report (Table 2 "Orig.", UCSD AUROC 0.92);
- ``seed``: the reproducibility report's own results (Table 2 "Ours", UCSD AUROC 0.8731);
- ``public_reproduction``: a public reproduction's committed dSprites results, whose metric variant differs
  from ours (see its ``note``): they are shown beside our numbers, never subtracted from them.

The numbers live in the CSV and nowhere else, so a corrected transcription changes every report at once.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

REFERENCE_FILE = Path(__file__).with_name("reference_numbers.csv")
SOURCES = {"paper": "paper (Liu et al. 2020)", "seed": "seed report", "public_reproduction": "public reproduction"}
CATEGORY_NAMES = {"metal_nut": "Metal nut"}  # Table 2 prints "Metal"; the MVTec folder is metal_nut


@lru_cache(maxsize=1)
def load() -> pd.DataFrame:
    frame = pd.read_csv(REFERENCE_FILE, dtype={"category": str, "model": str, "note": str})
    frame["category"] = frame["category"].fillna("")
    return frame


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
    return rows[rows["dataset"] == "dsprites"].reset_index(drop=True)


def citations(dataset: str | None = None) -> dict[str, str]:
    """One citation line per source (of ``dataset``'s rows, when given), for the text beside a table."""
    rows = load() if dataset is None else load()[load()["dataset"] == dataset]
    return {source: "; ".join(sorted(set(part["citation"]))) for source, part in rows.groupby("source")}
