"""Attention overlays as PNG figures (matplotlib, Agg: no display needed on cluster nodes)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _normalise(m: np.ndarray) -> np.ndarray:
    """Scale one map to [0, 1] for display (maps' raw magnitudes vary by orders across training)."""
    span = float(m.max() - m.min())
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def _finish(fig, axes, row_labels: list[str], title: str, path: str | Path | None):
    """Bare axes, row labels on the left, the title; saved as PNG (and closed) when ``path`` is given."""
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for row, label in enumerate(row_labels):
        axes[row, 0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig


def attention_overlay_figure(
    images: torch.Tensor,
    maps: torch.Tensor,
    dims: torch.Tensor,
    title: str = "",
    path: str | Path | None = None,
):
    """Input row, then one row per selected map (the image in grey, the map in jet at 50 % on top).

    ``images`` (n, C, H, W) in [0, 1]; ``maps`` (n, k, H, W); ``dims`` (n, k) the latent dims the maps
    belong to, used as panel titles. Writes a PNG to ``path`` when given and returns the Figure.
    """
    images, maps, dims = images.detach().cpu(), maps.detach().cpu(), dims.detach().cpu()
    n, k = maps.shape[:2]
    fig, axes = plt.subplots(k + 1, n, figsize=(1.6 * n, 1.6 * (k + 1)), squeeze=False)
    for col in range(n):
        img = images[col].permute(1, 2, 0).numpy()
        img = img[..., 0] if img.shape[-1] == 1 else img
        axes[0, col].imshow(img, cmap="gray", vmin=0, vmax=1)
        for row in range(k):
            ax = axes[row + 1, col]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.imshow(_normalise(maps[col, row].numpy()), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_title(f"z{int(dims[col, row])}", fontsize=8)
    return _finish(fig, axes, ["input"] + [f"#{row + 1} response" for row in range(k)], title, path)


def anomaly_grid_figure(
    images: torch.Tensor,
    masks: torch.Tensor | None,
    maps: torch.Tensor,
    threshold: float | None,
    title: str = "",
    path: str | Path | None = None,
    score_range: tuple[float, float] | None = None,
):
    """The report's Figures 1–3 layout: input, ground-truth mask, attention overlay, thresholded map.

    One column per image; the mask row is omitted when there are no masks (MNIST), the thresholded row when
    there is no threshold. Maps share one colour scale (``score_range``, default their own min/max), so
    columns are comparable, as the pooled pixel metrics assume.
    """
    images, maps = images.detach().cpu(), maps.detach().cpu()
    lo, hi = score_range if score_range is not None else (float(maps.min()), float(maps.max()))
    rows = ["input"] + (["ground truth"] if masks is not None else []) + ["attention"]
    rows += ["map ≥ best threshold"] if threshold is not None else []
    n = images.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.6 * len(rows)), squeeze=False)
    for col in range(n):
        img = images[col].permute(1, 2, 0).numpy()
        img = img[..., 0] if img.shape[-1] == 1 else img
        cells = {"input": (img, "gray", None)}
        if masks is not None:
            cells["ground truth"] = (masks[col].cpu().numpy(), "gray", None)
        cells["attention"] = (img, "gray", maps[col].numpy())
        if threshold is not None:
            cells["map ≥ best threshold"] = ((maps[col].numpy() >= threshold).astype(float), "gray", None)
        for row, name in enumerate(rows):
            base, cmap, overlay = cells[name]
            ax = axes[row, col]
            ax.imshow(base, cmap=cmap, vmin=0, vmax=1)
            if overlay is not None:
                ax.imshow(overlay, cmap="jet", alpha=0.5, vmin=lo, vmax=hi if hi > lo else lo + 1)
    return _finish(fig, axes, rows, title, path)
