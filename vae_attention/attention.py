"""Attention maps conditioned on the latent mean μ (Liu et al., CVPR 2020, Eqs. 2–3; Grad-CAM applied to a VAE).

For a conv layer with activations A ∈ R^{K×h×w} and a score s computed from μ:

    α_k = mean_{ij} ∂s/∂A_k,ij            (spatial mean of the gradient)
    M   = act(Σ_k α_k A_k)                 (h×w), then bilinear upsampling to the input size

Scores (``score=``):
- ``"sum"``: s = Σ_i μ_i, one map per image. The authors' code computes this, with ``act = |·|``.
- ``"per_dim"``: s = μ_i for each selected dimension i, one map per dimension (what L_AD compares).
- ``"mean_per_dim"``: the paper's formulation, the mean over i of the per-dimension maps, each activated.

Gradient normalisation (``normalize_grads=``): ``"none"``; ``"per_image"`` divides each image's gradient by
its RMS; ``"batch"`` divides by the RMS of the whole batch's gradient tensor as the authors' code does. The
batch mode makes one image's map depend on its batch-mates: keep it for the ablation, never for pooled pixel
metrics.

Activations are captured by a forward hook that hands a clone downstream, so an in-place ReLU after the
layer cannot overwrite the saved tensor; gradients come from ``torch.autograd.grad`` on that saved tensor
(no backward hooks). With ``create_graph=True`` the maps are differentiable and can enter a loss.

Per-dimension maps need one backward per dimension. Two equivalent implementations exist: a Python loop of
``autograd.grad`` calls, and one batched call (``is_grads_batched=True``, vmap under the hood). On 2 CPU
threads the loop was faster for a whole AD-FactorVAE step (see ``benchmarks/step.py``), so ``"auto"`` picks
the loop on CPU and the batched call on CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from vae_attention.errors import ConfigError

Score = Literal["sum", "per_dim", "mean_per_dim"]
GradNorm = Literal["none", "per_image", "batch"]
Activation = Literal["relu", "abs", "none"]
GradMethod = Literal["auto", "loop", "batched"]

SCORES = get_args(Score)
GRAD_NORMS = get_args(GradNorm)
ACTIVATIONS = get_args(Activation)
GRAD_METHODS = get_args(GradMethod)

# Guards the RMS division for an all-zero gradient (dead layer); gradients here are ~1e-4..1e0.
_RMS_EPS = 1e-12


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")


def _find_layer(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer not in modules:
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        raise ConfigError(f"attention layer {layer!r} is not a module of {type(model).__name__}; conv layers: {convs}")
    return modules[layer]


@contextmanager
def _capture_activation(module: nn.Module):
    """Yield a list that receives the module's output during the next forward pass."""
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output)
        # Downstream gets a clone: an in-place op after this layer would otherwise overwrite what we saved.
        return output.clone()

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def encode_with_activation(model: nn.Module, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model.encode(x)`` and return ``(mu, A)`` where A is the output of module ``layer``."""
    target = _find_layer(model, layer)
    with torch.enable_grad(), _capture_activation(target) as captured:
        mu, _ = model.encode(x)
    if len(captured) != 1:
        raise ConfigError(f"attention layer {layer!r} ran {len(captured)} times in one encode; need exactly once")
    activation = captured[0]
    if activation.dim() != 4:
        raise ConfigError(f"attention layer {layer!r} outputs shape {tuple(activation.shape)}; need (B, K, h, w)")
    return mu, activation


def check_layer(model: nn.Module, layer: str, example: torch.Tensor) -> tuple[int, ...]:
    """Fail early (ConfigError) unless ``layer`` gives a (B, K, h, w) activation on ``example``; its shape."""
    was_training = model.training
    model.eval()
    try:
        _, activation = encode_with_activation(model, example, layer)
    except RuntimeError as err:  # shape mismatches inside the model: the input size does not fit it
        raise ConfigError(f"{type(model).__name__} cannot encode a {tuple(example.shape[1:])} input: "
                          f"{str(err).splitlines()[0]}") from None
    finally:
        model.train(was_training)
    return tuple(activation.shape)


def _normalize(grads: torch.Tensor, mode: str) -> torch.Tensor:
    """Divide (…, B, K, h, w) gradients by their RMS, per image or over the whole batch."""
    if mode == "none":
        return grads
    reduce_dims = (-3, -2, -1) if mode == "per_image" else (-4, -3, -2, -1)
    rms = grads.pow(2).mean(dim=reduce_dims, keepdim=True).sqrt()
    return grads / (rms + _RMS_EPS)


def _activate(cam: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return F.relu(cam)
    if activation == "abs":
        return cam.abs()
    return cam


def _dims_matrix(dims, batch: int, z_dim: int, device: torch.device) -> torch.Tensor:
    """Selected latent dims as a (B, n) index tensor: a shared list, or one row per image (e.g. top-2)."""
    if dims is None:
        dims = range(z_dim)
    index = torch.as_tensor(dims, dtype=torch.long, device=device)
    if index.dim() == 1:
        index = index.unsqueeze(0).expand(batch, -1)
    if index.dim() != 2 or index.shape[0] != batch or index.shape[1] == 0:
        raise ConfigError(
            f"dims must be a non-empty list or a ({batch}, n) index tensor, got shape {tuple(index.shape)}"
        )
    if int(index.min()) < 0 or int(index.max()) >= z_dim:
        raise ConfigError(f"dims must lie in [0, {z_dim}), got {index.unique().tolist()}")
    return index


def per_dim_gradients(
    mu: torch.Tensor,
    activation: torch.Tensor,
    index: torch.Tensor,
    *,
    create_graph: bool,
    method: str = "auto",
) -> torch.Tensor:
    """∂μ_{b, index[b, j]}/∂A_b for every image b and selected slot j → (n, B, K, h, w).

    Images are independent in the forward pass (no batch norm in training mode), so the gradient of
    Σ_b μ_{b, index[b, j]} w.r.t. A holds each image's own gradient in its row.
    """
    if method == "auto":
        method = "batched" if activation.is_cuda else "loop"
    n = index.shape[1]
    # one-hot selectors: selectors[j, b, i] = 1 where i == index[b, j]
    selectors = F.one_hot(index.t(), mu.shape[1]).to(mu.dtype)
    if method == "batched":
        (grads,) = torch.autograd.grad(
            mu, activation, grad_outputs=selectors, is_grads_batched=True, create_graph=create_graph, retain_graph=True
        )
        return grads
    grads = [
        torch.autograd.grad(mu, activation, grad_outputs=selectors[j], create_graph=create_graph, retain_graph=True)[0]
        for j in range(n)
    ]
    return torch.stack(grads)


def attention_maps(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    *,
    score: Score = "sum",
    dims=None,
    normalize_grads: GradNorm = "none",
    activation: Activation = "relu",
    create_graph: bool = False,
    size: tuple[int, int] | None = None,
    grad_method: GradMethod = "auto",
    upsample_first: bool = False,
) -> torch.Tensor:
    """Latent-conditioned attention maps of ``layer`` for the batch ``x``.

    Returns (B, H, W) for ``score="sum"`` and ``"mean_per_dim"``, (B, n_dims, H, W) for ``"per_dim"``, where
    (H, W) = ``size`` or the input's spatial size. ``dims``: the latent dimensions for the per-dimension
    scores (default all), either a list shared by the batch or a (B, n) tensor of per-image choices.
    The model's train/eval mode is the caller's choice (eval for batch-norm models, so maps are per-image).
    Without ``create_graph`` the maps are detached. ``upsample_first=True`` applies the activation after
    the bilinear upsampling, as the authors' code does (``abs`` of the upsampled map); the default
    activates at the layer's resolution, then upsamples (the paper's order).
    """
    _check_choice("score", score, SCORES)
    _check_choice("normalize_grads", normalize_grads, GRAD_NORMS)
    _check_choice("activation", activation, ACTIVATIONS)
    _check_choice("grad_method", grad_method, GRAD_METHODS)
    if size is None:
        size = tuple(x.shape[-2:])

    mu, feats = encode_with_activation(model, x, layer)
    if score == "sum":
        (grads,) = torch.autograd.grad(mu.sum(), feats, create_graph=create_graph, retain_graph=create_graph)
        grads = grads.unsqueeze(0)  # (1, B, K, h, w)
    else:
        index = _dims_matrix(dims, x.shape[0], mu.shape[1], mu.device)
        grads = per_dim_gradients(mu, feats, index, create_graph=create_graph, method=grad_method)

    grads = _normalize(grads, normalize_grads)
    alpha = grads.mean(dim=(-2, -1), keepdim=True)  # (n, B, K, 1, 1)
    maps = (alpha * feats).sum(dim=-3).transpose(0, 1)  # (B, n, h, w) before the activation
    resize = tuple(maps.shape[-2:]) != tuple(size)
    if resize and upsample_first:
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    maps = _activate(maps, activation)
    if resize and not upsample_first:
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    if score == "mean_per_dim":  # the mean over dims commutes with the (linear) upsampling
        maps = maps.mean(dim=1, keepdim=True)
    if score != "per_dim":
        maps = maps[:, 0]
    return maps if create_graph else maps.detach()
