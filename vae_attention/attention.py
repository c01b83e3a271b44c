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

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from vae_attention.encoder_chain import EncoderChain
from vae_attention.errors import ConfigError

Score = Literal["sum", "per_dim", "mean_per_dim"]
GradNorm = Literal["none", "per_image", "batch"]
Activation = Literal["relu", "abs", "none"]
GradMethod = Literal["auto", "loop", "batched", "chain"]
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (mu, logvar) -> (B,) per-image scores

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


class CapturedActivation:
    """The output of one module during one forward pass, filled in by ``capture_activation``."""

    def __init__(self, layer: str):
        self.layer = layer
        self.outputs: list[torch.Tensor] = []

    @property
    def tensor(self) -> torch.Tensor:
        """The (B, K, h, w) activation; ConfigError unless the layer ran exactly once with a 4-D output."""
        if len(self.outputs) != 1:
            raise ConfigError(
                f"attention layer {self.layer!r} ran {len(self.outputs)} times in one forward; need exactly once")
        activation = self.outputs[0]
        if activation.dim() != 4:
            raise ConfigError(
                f"attention layer {self.layer!r} outputs shape {tuple(activation.shape)}; need (B, K, h, w)")
        return activation


@contextmanager
def capture_activation(model: nn.Module, layer: str, enabled: bool = True):
    """Yield a ``CapturedActivation`` that receives the output of module ``layer`` during the forward passes
    run inside the block (``enabled=False``: yields None and hooks nothing).

    This lets a training step take attention maps from its own forward pass (one encoder pass per step):
    the gradients of that forward's μ w.r.t. ``.tensor`` are exactly those a second ``encode`` would give.
    """
    if not enabled:
        yield None
        return
    target = _find_layer(model, layer)
    captured = CapturedActivation(layer)

    def hook(_module, _inputs, output):
        captured.outputs.append(output)
        # Downstream gets a clone: an in-place op after this layer would otherwise overwrite what we saved.
        return output.clone()

    handle = target.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def encode_with_activation(model: nn.Module, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model.encode(x)`` and return ``(mu, A)`` where A is the output of module ``layer``."""
    with torch.enable_grad(), capture_activation(model, layer) as captured:
        mu, _ = model.encode(x)
    return mu, captured.tensor


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
    """Selected latent dims as a (B, n) index tensor: a shared list, or one row per image (e.g. top-2).

    A list is range-checked in Python; only a tensor's range check reads it back from the device.
    """
    if dims is None:  # built on the device: a host list would be copied over (a sync on CUDA) every step
        return torch.arange(z_dim, device=device).unsqueeze(0).expand(batch, -1)
    on_host = not torch.is_tensor(dims)
    if on_host and not all(0 <= int(d) < z_dim for d in dims):
        raise ConfigError(f"dims must lie in [0, {z_dim}), got {sorted(set(dims))}")
    index = torch.as_tensor(dims, dtype=torch.long, device=device)
    if index.dim() == 1:
        index = index.unsqueeze(0).expand(batch, -1)
    if index.dim() != 2 or index.shape[0] != batch or index.shape[1] == 0:
        raise ConfigError(
            f"dims must be a non-empty list or a ({batch}, n) index tensor, got shape {tuple(index.shape)}"
        )
    if not on_host and (int(index.min()) < 0 or int(index.max()) >= z_dim):
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
    selectors = _selectors(mu, index)
    if method == "batched":
        (grads,) = torch.autograd.grad(
            mu, activation, grad_outputs=selectors, is_grads_batched=True, create_graph=create_graph, retain_graph=True
        )
        return grads
    return torch.stack([_one_dim_gradient(mu, activation, selector, create_graph) for selector in selectors])


def _selectors(mu: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """One-hot (n, B, z) gradient seeds: selectors[j, b, i] = 1 where i == index[b, j]."""
    return F.one_hot(index.t(), mu.shape[1]).to(mu.dtype)


def _one_dim_gradient(mu, activation, selector, create_graph: bool) -> torch.Tensor:
    return torch.autograd.grad(mu, activation, grad_outputs=selector, create_graph=create_graph, retain_graph=True)[0]


def per_dim_channel_weights(
    mu: torch.Tensor,
    activation: torch.Tensor,
    index: torch.Tensor,
    *,
    normalize_grads: GradNorm = "none",
    create_graph: bool,
    method: str = "auto",
    chain: EncoderChain | None = None,
) -> torch.Tensor:
    """α (n, B, K): the spatial means of the (normalised) ``per_dim_gradients``, the same numbers.

    Methods: ``loop`` (one ``autograd.grad`` per slot), ``batched`` (one vmapped ``autograd.grad``), ``chain``
    (the chain rule written out through the layers above the activation, ``chain`` = ``EncoderChain.after``;
    the fastest on CPU). ``auto``: batched on CUDA; on CPU chain where ``chain`` is given and the activation is
    float32 (a bf16 activation keeps autograd's own route), else loop.
    The loop and chain methods reduce each dimension's (B, K, h, w) gradient as soon as it is computed, so the
    (n, B, K, h, w) stack (84 MB at n = 10, B = 64, 32×32×32) is never built, nor its double backward (a
    broadcast division over all of it): ~20 % of a 10-map AD-FactorVAE step on 2 CPU threads. Both
    normalisations act on one dimension's gradient at a time, so reducing per dimension changes nothing.
    """
    if method == "auto":
        if activation.is_cuda:
            method = "batched"
        else:
            method = "chain" if chain is not None and activation.dtype == torch.float32 else "loop"
    if method == "batched":
        grads = per_dim_gradients(mu, activation, index, create_graph=create_graph, method="batched")
        return _normalize(grads, normalize_grads).mean(dim=(-2, -1))
    if method == "chain":
        if chain is None:
            raise ConfigError("grad_method='chain' needs a model whose encoder layers above the attention layer "
                              "are a chain of Conv2d/Linear/ReLU/Flatten/Identity (the dSprites VAEs)")
        one_at_a_time = chain.per_dim_gradients(activation, index, create_graph=create_graph)
    else:
        one_at_a_time = (_one_dim_gradient(mu, activation, selector, create_graph)
                         for selector in _selectors(mu, index))
    return torch.stack([_normalize(grad, normalize_grads).mean(dim=(-2, -1)) for grad in one_at_a_time])


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
    score_fn: ScoreFn | None = None,
) -> torch.Tensor:
    """Latent-conditioned attention maps of ``layer`` for the batch ``x``.

    Returns (B, H, W) for ``score="sum"`` and ``"mean_per_dim"``, (B, n_dims, H, W) for ``"per_dim"``, where
    (H, W) = ``size`` or the input's spatial size. ``dims``: the latent dimensions for the per-dimension
    scores (default all), either a list shared by the batch or a (B, n) tensor of per-image choices.
    The model's train/eval mode is the caller's choice (eval for batch-norm models, so maps are per-image).
    Without ``create_graph`` the maps are detached. ``upsample_first=True`` applies the activation after
    the bilinear upsampling, as the authors' code does (``abs`` of the upsampled map); the default
    activates at the layer's resolution, then upsamples (the paper's order). ``score_fn(mu, logvar) -> (B,)``,
    when given, replaces ``score``: the maps are those of that per-image score (one map per image), e.g.
    ``vae_attention.anomaly_scores.normal_difference_score`` with its inlier statistics bound.
    """
    _check_choice("score", score, SCORES)
    _check_choice("normalize_grads", normalize_grads, GRAD_NORMS)
    _check_choice("activation", activation, ACTIVATIONS)
    _check_choice("grad_method", grad_method, GRAD_METHODS)
    if size is None:
        size = tuple(x.shape[-2:])

    if score_fn is not None:
        # The map of a per-image score s_b = score_fn(μ_b, log σ²_b): Grad-CAM of s as a (B, 1) "latent" under
        # score="sum" (images are independent, so ∂Σ_b s_b/∂A holds each image's own gradient in its row).
        with torch.enable_grad(), capture_activation(model, layer) as captured:
            mu, logvar = model.encode(x)
            scores = score_fn(mu, logvar)
        if scores.shape != (x.shape[0],):
            raise ConfigError(f"score_fn must return one score per image, shape ({x.shape[0]},), "
                              f"got {tuple(scores.shape)}")
        mu, feats, score = scores.unsqueeze(1), captured.tensor, "sum"
    else:
        mu, feats = encode_with_activation(model, x, layer)
    return maps_from_activation(
        mu, feats, score=score, dims=dims, normalize_grads=normalize_grads, activation=activation,
        create_graph=create_graph, size=size, grad_method=grad_method, upsample_first=upsample_first,
        chain=EncoderChain.after(model, layer) if score_fn is None else None,
    )


def maps_from_activation(
    mu: torch.Tensor,
    feats: torch.Tensor,
    *,
    score: Score = "sum",
    dims=None,
    normalize_grads: GradNorm = "none",
    activation: Activation = "relu",
    create_graph: bool = False,
    size: tuple[int, int],
    grad_method: GradMethod = "auto",
    upsample_first: bool = False,
    chain: EncoderChain | None = None,
) -> torch.Tensor:
    """The maps of ``attention_maps`` from a forward pass already run: μ (B, z) and the layer's activation
    ``feats`` (B, K, h, w) of the same graph (e.g. captured by ``capture_activation`` during a training
    forward). The graph is kept (``retain_graph``), so the caller can still backpropagate its own losses
    through it. ``size``: the (H, W) the maps are upsampled to (the input's spatial size). ``chain``: the model's
    ``EncoderChain.after(model, layer)``, which per-dimension scores use where ``grad_method`` allows.
    """
    _check_choice("score", score, SCORES)
    _check_choice("normalize_grads", normalize_grads, GRAD_NORMS)
    _check_choice("activation", activation, ACTIVATIONS)
    _check_choice("grad_method", grad_method, GRAD_METHODS)
    if score == "sum":
        (grads,) = torch.autograd.grad(mu.sum(), feats, create_graph=create_graph, retain_graph=True)
        alpha = _normalize(grads, normalize_grads).mean(dim=(-2, -1)).unsqueeze(0)  # (1, B, K)
    else:
        index = _dims_matrix(dims, mu.shape[0], mu.shape[1], mu.device)
        alpha = per_dim_channel_weights(mu, feats, index, normalize_grads=normalize_grads,
                                        create_graph=create_graph, method=grad_method, chain=chain)  # (n, B, K)
    # Σ_k α_k A_k as one batched matmul per image: broadcasting α against A would materialise an (n, B, K, h, w)
    # product (84 MB at n = 10, B = 64, 32×32×32) whose memory traffic made the step ~4× slower on CPU
    maps = torch.einsum("nbk,bkhw->bnhw", alpha, feats)  # (B, n, h, w) before the activation
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
