"""Latent traversals and per-dimension attention traversals of a VAE, as an image grid, a GIF and a
reconstruction grid.

What they show follows disentanglement_lib's ``visualize/visualize_model.py`` (Locatello et al., 2019):
reconstructions (inputs beside their decodes) and, for a few anchor images, every latent dimension swept while
the others stay at the anchor's code, as a still grid and an animation. Here:

- the code of anchor a is its posterior mean μ_a (the encoder's μ, eval mode); dimension d is swept to
  z_d = μ_a,d + t for t in ``traversal_offsets(steps, span)`` = ``steps`` evenly spaced values in
  [−span·σ, +span·σ], the other dimensions held at μ_a. The image is the decoder's Bernoulli mean
  sigmoid(decode(z)). With an odd ``steps`` the middle value is exactly t = 0, i.e. the anchor's plain
  (μ-decoded) reconstruction.
- σ = 1, the prior's standard deviation, for every dimension and anchor. Why not the anchor's posterior σ:
  the dimensions worth looking at are the informative ones, whose posterior σ is small (a well-trained
  dSprites FactorVAE has σ ≈ 0.05–0.2 there), so ±3 posterior σ would barely move the image; the
  uninformative ones have posterior σ ≈ 1 anyway. The prior's scale is the one the KL term pulls the aggregate
  posterior towards, and one scale for all rows keeps rows and anchors comparable. disentanglement_lib's
  ``std_gaussian_cycle`` animations use the same N(0, 1) scale (its still grids set z_d to absolute values in
  [−1, 1] instead of offsets from μ).
- the attention traversal: for each traversed image, the per-dimension attention map (Liu et al., CVPR 2020,
  Eq. 2, ``vae_attention.attention``) of the dimension being swept, computed on that decoded image. It shows
  where in the image the encoder reads z_d from as z_d moves.

The tensors are pure torch; matplotlib (Agg) and PIL are used only in ``traversal_figures`` to write the files.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vae_attention.attention import Activation, GradNorm, attention_maps
from vae_attention.errors import ConfigError

# Display layout, in pixels: the gap between tiles and the GIF's label strip (PIL's default bitmap font is ~11 px).
GAP_PX = 2
LABEL_PX = 14
GIF_FRAME_MS = 250  # 7 frames ≈ 1.75 s per sweep
# Codes decoded per forward: bounds memory for large decoders (ResNet-18 at 256²) without slowing small ones.
DECODE_CHUNK = 256


@contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode inside the block (per-image batch norm, μ-decodes), the caller's mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def traversal_offsets(steps: int, span: float = 3.0) -> torch.Tensor:
    """``steps`` evenly spaced offsets t in [−span, +span] (units of the prior σ = 1); the middle one of an odd
    ``steps`` is exactly 0 (integer arithmetic, so no rounding moves it off the anchor's own code)."""
    if steps < 2:
        raise ConfigError(f"a traversal needs steps >= 2, got {steps}")
    if not span > 0:
        raise ConfigError(f"a traversal needs span > 0 (in prior σ), got {span}")
    return (2 * torch.arange(steps) - (steps - 1)).double().mul(span / (steps - 1)).float()


def _check_dims(dims: Sequence[int] | None, z_dim: int) -> list[int]:
    dims = list(range(z_dim)) if dims is None else [int(d) for d in dims]
    if not dims or min(dims) < 0 or max(dims) >= z_dim:
        raise ConfigError(f"traversal dims must be a non-empty list in [0, {z_dim}), got {dims}")
    return dims


def traversal_codes(mu: torch.Tensor, dims: Sequence[int], offsets: torch.Tensor) -> torch.Tensor:
    """Codes (A, D, S, z): ``codes[a, j, s] = μ_a`` except ``codes[a, j, s, dims[j]] = μ_a,dims[j] + offsets[s]``."""
    anchors, z_dim = mu.shape
    codes = mu[:, None, None, :].repeat(1, len(dims), len(offsets), 1)
    offsets = offsets.to(mu.device, mu.dtype)
    for j, d in enumerate(dims):
        codes[:, j, :, d] = mu[:, d, None] + offsets
    return codes


@torch.no_grad()
def latent_traversal(vae: nn.Module, images: torch.Tensor, dims: Sequence[int] | None = None, steps: int = 7,
                     span: float = 3.0) -> torch.Tensor:
    """Decoded traversals (anchors, dims, steps, C, H, W) in [0, 1] of the anchor ``images`` (A, C, H, W).

    ``dims``: the latent dimensions swept (default all); each over ``traversal_offsets(steps, span)`` around the
    anchor's posterior mean, in prior σ (see the module docstring). Runs in eval mode; the model's mode is
    restored.
    """
    offsets = traversal_offsets(steps, span)
    with _eval_mode(vae):
        mu, _ = vae.encode(images)
        dims = _check_dims(dims, mu.shape[1])
        codes = traversal_codes(mu, dims, offsets).flatten(0, 2)
        decoded = torch.cat([torch.sigmoid(vae.decode(chunk)) for chunk in codes.split(DECODE_CHUNK)])
    return decoded.reshape(mu.shape[0], len(dims), steps, *decoded.shape[1:])


@torch.no_grad()
def reconstruct(vae: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """sigmoid(decode(μ)) of ``images`` in eval mode: the plain reconstruction (the traversal's t = 0)."""
    with _eval_mode(vae):
        return torch.sigmoid(vae(images).recon_logits)


def traversal_attention(vae: nn.Module, traversed: torch.Tensor, dims: Sequence[int], layer: str, *,
                        activation: Activation = "relu", normalize_grads: GradNorm = "none") -> torch.Tensor:
    """Per-dimension attention maps (anchors, dims, steps, H, W) of the traversed images (A, D, S, C, H, W):
    the map at ``[a, j, s]`` is that of latent ``dims[j]`` (the one being swept) on image ``traversed[a, j, s]``,
    at module ``layer`` of the encoder, from ``attention_maps(score="per_dim")`` in eval mode.

    ``normalize_grads="batch"`` would make each map depend on the whole sweep; keep "none" for figures.
    """
    anchors, n_dims, steps = traversed.shape[:3]
    if len(dims) != n_dims:
        raise ConfigError(f"traversal has {n_dims} swept dimensions but {len(dims)} dims were given")
    flat = traversed.flatten(0, 2)
    # one row per image: the index of the dimension swept in it, broadcast over anchors and steps
    index = torch.as_tensor(list(dims), dtype=torch.long, device=flat.device)[None, :, None]
    index = index.expand(anchors, -1, steps).reshape(-1, 1)
    with _eval_mode(vae):
        maps = attention_maps(vae, flat, layer, score="per_dim", dims=index, activation=activation,
                              normalize_grads=normalize_grads)
    return maps[:, 0].reshape(anchors, n_dims, steps, *maps.shape[-2:])


# -- composing tiles (numpy, (H, W, 3) float arrays in [0, 1]) ---------------------------------------------------
def _rgb(image: torch.Tensor) -> np.ndarray:
    """A (C, H, W) image in [0, 1] as (H, W, 3): grey images are repeated over the three channels."""
    array = image.detach().cpu().float().clamp(0, 1).permute(1, 2, 0).numpy()
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array[..., :3]


def _overlay(image: torch.Tensor, heat: np.ndarray, colormap) -> np.ndarray:
    """The image in grey with the [0, 1] ``heat`` map in the colormap at 50 % on top (as ``figures.py``)."""
    grey = _rgb(image).mean(axis=-1, keepdims=True).repeat(3, axis=-1)
    return 0.5 * grey + 0.5 * colormap(heat)[..., :3]


def _scaled_rows(maps: torch.Tensor) -> np.ndarray:
    """Maps (A, D, S, H, W) scaled to [0, 1] per (anchor, dim) sweep: one scale over its steps, so a map
    that grows or fades along the sweep shows it (maps' raw magnitudes vary by orders across training)."""
    m = maps.detach().cpu().double().numpy()
    lo = m.min(axis=(2, 3, 4), keepdims=True)
    span = m.max(axis=(2, 3, 4), keepdims=True) - lo
    return np.where(span > 0, (m - lo) / np.where(span > 0, span, 1.0), 0.0)


def _grid(tiles: list[list[np.ndarray]]) -> np.ndarray:
    """Rows of equally sized (h, w, 3) tiles as one image with white ``GAP_PX`` gaps."""
    h, w = tiles[0][0].shape[:2]
    rows, cols = len(tiles), max(len(r) for r in tiles)
    out = np.ones((rows * (h + GAP_PX) - GAP_PX, cols * (w + GAP_PX) - GAP_PX, 3))
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            out[r * (h + GAP_PX):r * (h + GAP_PX) + h, c * (w + GAP_PX):c * (w + GAP_PX) + w] = tile
    return out


def _gif_frames(traversed: torch.Tensor, heat: np.ndarray, dims: Sequence[int], offsets: torch.Tensor,
                colormap) -> list:
    """One PIL frame per step: per anchor a row of decodes and a row of attention overlays, one column per
    swept dimension, under a strip naming the dimensions and the offset t (which also keeps consecutive frames
    distinct, so PIL's writer never merges two)."""
    from PIL import Image, ImageDraw

    anchors, n_dims, steps = traversed.shape[:3]
    frames = []
    for s in range(steps):
        tiles = []
        for a in range(anchors):
            tiles.append([_rgb(traversed[a, j, s]) for j in range(n_dims)])
            tiles.append([_overlay(traversed[a, j, s], heat[a, j, s], colormap) for j in range(n_dims)])
        body = (_grid(tiles) * 255).round().astype(np.uint8)
        frame = Image.new("RGB", (body.shape[1], body.shape[0] + 2 * LABEL_PX), "white")
        frame.paste(Image.fromarray(body), (0, LABEL_PX))
        draw = ImageDraw.Draw(frame)
        tile_w = traversed.shape[-1] + GAP_PX
        for j, d in enumerate(dims):
            draw.text((j * tile_w + 2, 1), f"z{d}", fill="black")
        draw.text((2, body.shape[0] + LABEL_PX + 1), f"z_d - mu_d = {float(offsets[s]):+.2f} (prior sd)", fill="black")
        frames.append(frame)
    return frames


def traversal_figures(images: torch.Tensor, reconstructions: torch.Tensor, traversed: torch.Tensor,
                      maps: torch.Tensor, dims: Sequence[int], span: float, iteration: int,
                      directory: str | Path, title: str = "") -> list[Path]:
    """Write ``traversal_<iteration>.png``, ``traversal_<iteration>.gif`` and ``reconstruction_<iteration>.png``
    (iteration zero-padded to 7 digits like the attention figure) into ``directory``; return their paths.

    - traversal PNG: per anchor two panels, the decoded sweep (``traversed`` (A, D, S, C, H, W)) and its
      attention overlays (``maps`` (A, D, S, H, W), one colour scale per sweep); one row per swept dimension
      (``dims``), one column per offset t ∈ [−span, +span] prior σ.
    - traversal GIF: ``steps`` frames, frame s = every anchor × dimension at offset t_s (decodes above their
      attention overlays), looping.
    - reconstruction PNG: ``images`` (n, C, H, W) above ``reconstructions`` (n, C, H, W).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    images, reconstructions, traversed = (t.detach().cpu() for t in (images, reconstructions, traversed))
    anchors, n_dims, steps = traversed.shape[:3]
    offsets = traversal_offsets(steps, span)
    colormap = matplotlib.colormaps["jet"]
    heat = _scaled_rows(maps)
    stem = f"{iteration:07d}"
    paths = [directory / f"traversal_{stem}.png", directory / f"traversal_{stem}.gif",
             directory / f"reconstruction_{stem}.png"]

    h, w = traversed.shape[-2:]
    inch = 0.5  # per tile
    fig, axes = plt.subplots(anchors, 2, figsize=(2 * inch * steps + 1.5, inch * n_dims * anchors + 1.0),
                             squeeze=False)
    for a in range(anchors):
        decoded = _grid([[_rgb(traversed[a, j, s]) for s in range(steps)] for j in range(n_dims)])
        overlaid = _grid([[_overlay(traversed[a, j, s], heat[a, j, s], colormap) for s in range(steps)]
                          for j in range(n_dims)])
        for ax, panel, name in ((axes[a, 0], decoded, "decoded"), (axes[a, 1], overlaid, "attention of z_d")):
            ax.imshow(panel, interpolation="nearest")
            ax.set_yticks([j * (h + GAP_PX) + h / 2 for j in range(n_dims)], [f"z{d}" for d in dims], fontsize=7)
            ax.set_xticks([s * (w + GAP_PX) + w / 2 for s in range(steps)],
                          [f"{float(t):+.1f}" for t in offsets], fontsize=6)
            ax.set_title(f"anchor {a}: {name}", fontsize=8)
        axes[a, 0].set_xlabel("z_d − μ_d (prior σ)", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    frames = _gif_frames(traversed, heat, dims, offsets, colormap)
    frames[0].save(paths[1], save_all=True, append_images=frames[1:], duration=GIF_FRAME_MS, loop=0)

    n = images.shape[0]
    grid = _grid([[_rgb(x) for x in images], [_rgb(x) for x in reconstructions]])
    fig, ax = plt.subplots(figsize=(0.8 * n + 1.0, 2.2))
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([h / 2, h + GAP_PX + h / 2], ["input", "reconstruction"], fontsize=7)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)
    return paths
