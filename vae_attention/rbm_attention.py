"""Attention maps for a stack of RBMs, made differentiable by a Gumbel relaxation; two constructions by name.

``seed`` — the reproducibility report's (Carmoondedraak/FACT-2021, ``rbm_anomaly_maps/StackRBMs.py``, re-written):
for layer ℓ with pre-activations A = c + W x (x = the layer's input, hidden probabilities of the layers below),
draw a relaxed one-hot (Gumbel-softmax, temperature τ) sample z over the layer's n hidden units with the
*probabilities* p = σ(A) (σ(2A) for spin units) used as logits, score s = Σ_{b,j} z_bj, take g = ∂s/∂A, divide g
by its RMS over the whole batch (+1e-5), α_b = mean_j g_bj, map = σ(upsample(α_b · A_b on a √n × √n grid)).
It is broken by construction: a relaxed one-hot sample lies on the simplex, Σ_j z_bj = 1 for every image, so s = B
whatever the input and ∂s/∂A is 0 up to float rounding (autograd's softmax backward returns z_j(1 − Σ_i z_i)).
The RMS step then scales that rounding noise to ~1e-3, so each map is σ(ε_b A_b) ≈ 0.5 with a noise-sized,
random-sign ε_b: after the min–max scaling used for display it shows ±A_b, the layer's pre-activation pattern,
not anything the score attends to. This is what the report judged "not meaningful".

``gradcam`` — ours, the default: a score that does depend on the input. At the chosen layer ℓ each hidden unit gets
a relaxed *binary* sample (binary Concrete / Gumbel-sigmoid, Maddison et al. 2017; Jang et al. 2017)

    y = σ((logit P(h_j on | x) + log u − log(1 − u)) / τ),   u ~ U(0, 1)

(logit = a_j for binary units, 2 a_j for spin units, whose relaxed value is 2y − 1), optionally straight-through
(forward value 1[y > ½], gradient of y). The score is s = (1/S) Σ_samples Σ_{b,j} h̃_bj over S samples; the
layers below pass their hidden probabilities deterministically (``StackedRBM.transform``). As τ → 0, y → the hard
Bernoulli sample in distribution; for every τ, P(y > ½) = P(h on | x).

Grad-CAM for a fully connected first layer: treat first-layer hidden unit k as a channel whose activation map is its
weighted input A_k = W_k ⊙ v (28 × 28), so a_k = c_k + Σ_ij A_k,ij. Grad-CAM's α_k is the spatial mean of ∂s/∂A_k,ij,
and ∂s/∂A_k,ij = ∂s/∂a_k for every pixel, so α_k = ∂s/∂a_k exactly, and

    map = act(Σ_k α_k W_k ⊙ v) = act(v ⊙ Wᵀ ∂s/∂a) = act(v ⊙ ∂s/∂v)

— Grad-CAM on the first layer is gradient × input. For ℓ > 0 the score is computed through the stack and the
same identity holds with α_k = ∂s/∂a_k^(0) (chain rule through the layers above), so the map is act(v ⊙ ∂s/∂v)
for every layer. Gradient × input is the first-order Taylor term of s at v against the all-off image (s(v) − s(0)
≈ Σ_i v_i ∂s/∂v_i), which is why it is the better-grounded construction here: pixels that are on and that turn the
scored units on get weight; pixels that are off get none. ``activation``: ``relu`` (Grad-CAM's), ``abs``, ``none``.

Both constructions return (B, 1, H, W) maps (H = W = √n_visible unless ``image_size`` is given), detached unless
``create_graph=True`` (then they are differentiable and can enter a loss). Noise comes from the injected
``generator``: gradcam draws one ``torch.rand((n_samples, B, n_hidden))``, seed one ``torch.rand((B, n_hidden))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vae_attention.errors import ConfigError
from vae_attention.models.rbm import StackedRBM

RBM_MAPS = ("gradcam", "seed")
DEFAULT_RBM_MAP = "gradcam"
RBM_MAP_ACTIVATIONS = ("relu", "abs", "none")
SEED_TEMPERATURE = 0.1  # the report's TEMP
_SEED_RMS_EPS = 1e-5  # the report's code


def _uniform(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U(0, 1) clamped to [eps, 1 − eps] as ``torch.distributions.utils.clamp_probs`` does."""
    eps = torch.finfo(like.dtype).eps
    u = torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)
    return u.clamp(min=eps, max=1 - eps)


def relaxed_bernoulli(logits: torch.Tensor, temperature: float, *, straight_through: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Binary Concrete sample σ((logits + log u − log(1 − u)) / τ), same shape as ``logits``.

    Same law (and, for the same uniforms, the same values) as ``torch.distributions.RelaxedBernoulli``.
    ``straight_through``: the forward value is the hard sample 1[y > ½] and the gradient is that of y.
    """
    if temperature <= 0:
        raise ConfigError(f"relaxation temperature must be > 0, got {temperature}")
    u = _uniform(logits.shape, logits, generator)
    y = torch.sigmoid((logits + u.log() - torch.log1p(-u)) / temperature)
    if straight_through:
        y = (y > 0.5).to(y.dtype) + (y - y.detach())  # exactly the hard value forward (y − y is exactly 0)
    return y


def relaxed_one_hot(logits: torch.Tensor, temperature: float, *,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-softmax sample softmax((logits + g) / τ) over the last axis, g = −log(−log u).

    Same law (and values, for the same uniforms) as ``torch.distributions.RelaxedOneHotCategorical``, which the
    report's code samples. Each row sums to 1.
    """
    if temperature <= 0:
        raise ConfigError(f"relaxation temperature must be > 0, got {temperature}")
    u = _uniform(logits.shape, logits, generator)
    gumbel = -(-u.log()).log()
    return torch.log_softmax((logits + gumbel) / temperature, dim=-1).exp()


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")


def _image_size(n_visible: int, image_size: tuple[int, int] | None) -> tuple[int, int]:
    if image_size is not None:
        if image_size[0] * image_size[1] != n_visible:
            raise ConfigError(f"image_size {tuple(image_size)} does not hold the RBM's {n_visible} visible units")
        return tuple(image_size)
    side = math.isqrt(n_visible)
    if side * side != n_visible:
        raise ConfigError(f"{n_visible} visible units are not a square image; pass image_size")
    return side, side


def _leaf_input(v: torch.Tensor) -> torch.Tensor:
    """v flattened, as a tensor autograd can differentiate w.r.t. (the caller's graph is kept if it has one)."""
    v = v.flatten(1)
    return v if v.requires_grad else v.detach().requires_grad_(True)


def gradcam_score(stack: StackedRBM, v: torch.Tensor, layer: int = 0, *, temperature: float = 0.5,
                  n_samples: int = 1, straight_through: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """s = (1/S) Σ_samples Σ_{b,j} relaxed sample of hidden unit j of ``layer`` for image b (a scalar).

    Binary units contribute y ∈ (0, 1), spin units 2y − 1 ∈ (−1, 1). Images are independent, so ∂s/∂v_b is
    image b's own gradient.
    """
    if n_samples < 1:
        raise ConfigError(f"gradcam n_samples must be >= 1, got {n_samples}")
    rbm = stack.layers[stack._check_layer(layer)]
    a = rbm.hidden_preactivation(stack.transform(v, layer))
    logits = a if rbm.hidden == "binary" else 2.0 * a
    y = relaxed_bernoulli(logits.expand(n_samples, *logits.shape), temperature,
                          straight_through=straight_through, generator=generator)
    h = y if rbm.hidden == "binary" else 2.0 * y - 1.0
    return h.sum() / n_samples


def gradcam_map(stack: StackedRBM, v: torch.Tensor, layer: int = 0, *, temperature: float = 0.5,
                n_samples: int = 1, straight_through: bool = False, activation: str = "relu",
                generator: torch.Generator | None = None, create_graph: bool = False,
                image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Grad-CAM map of the stack for the score ``gradcam_score(…, layer)``: act(v ⊙ ∂s/∂v) as (B, 1, H, W).

    Equal to act(Σ_k α_k W_k ⊙ v) with α_k = ∂s/∂a_k of first-layer unit k (see the module docstring).
    """
    _check_choice("activation", activation, RBM_MAP_ACTIVATIONS)
    size = _image_size(stack.sizes[0], image_size)
    with torch.enable_grad():
        x = _leaf_input(v)
        score = gradcam_score(stack, x, layer, temperature=temperature, n_samples=n_samples,
                              straight_through=straight_through, generator=generator)
        (grad,) = torch.autograd.grad(score, x, create_graph=create_graph)
        cam = x * grad
    if activation == "relu":
        cam = F.relu(cam)
    elif activation == "abs":
        cam = cam.abs()
    cam = cam.reshape(cam.shape[0], 1, *size)
    return cam if create_graph else cam.detach()


def _seed_forward(stack: StackedRBM, v: torch.Tensor, layer: int, temperature: float,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, A) of the report's construction: A = layer pre-activations, score = Σ relaxed one-hot(σ(A))."""
    rbm = stack.layers[stack._check_layer(layer)]
    pre = rbm.hidden_preactivation(stack.transform(v, layer))
    probs = torch.sigmoid(pre) if rbm.hidden == "binary" else torch.sigmoid(2.0 * pre)
    z = relaxed_one_hot(probs, temperature, generator=generator)  # probabilities as logits, as in the report
    return z.sum(), pre


def seed_score(stack: StackedRBM, v: torch.Tensor, layer: int, *, temperature: float = SEED_TEMPERATURE,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The report's score: Σ over images and units of a relaxed one-hot sample. Equals B for any input."""
    return _seed_forward(stack, v, layer, temperature, generator)[0]


def seed_map(stack: StackedRBM, v: torch.Tensor, layer: int, *, temperature: float = SEED_TEMPERATURE,
             generator: torch.Generator | None = None, create_graph: bool = False,
             image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """The report's map σ(upsample(α_b A_b)) (B, 1, H, W); see the module docstring for why it carries no signal.

    ``layer``'s hidden count must be a square number (the report's sizes all are).
    """
    side = stack.square_side(layer)
    size = _image_size(stack.sizes[0], image_size)
    with torch.enable_grad():
        x = _leaf_input(v)
        score, pre = _seed_forward(stack, x, layer, temperature, generator)
        (grad,) = torch.autograd.grad(score, pre, create_graph=create_graph)
        grad = grad / (grad.pow(2).mean().sqrt() + _SEED_RMS_EPS)  # RMS over the whole batch, as the report
        alpha = grad.mean(dim=1, keepdim=True)  # (B, 1): one weight per image (the grid is one channel)
        cam = (alpha * pre).reshape(pre.shape[0], 1, side, side)
        cam = torch.sigmoid(F.interpolate(cam, size=size, mode="bilinear", align_corners=False))
    return cam if create_graph else cam.detach()


def rbm_attention_maps(stack: StackedRBM, v: torch.Tensor, layer: int, method: str = DEFAULT_RBM_MAP,
                       **kwargs) -> torch.Tensor:
    """Dispatch on the config value ``rbm_map``: ``gradcam`` → :func:`gradcam_map`, ``seed`` → :func:`seed_map`."""
    _check_choice("rbm_map", method, RBM_MAPS)
    fn = gradcam_map if method == "gradcam" else seed_map
    return fn(stack, v, layer, **kwargs)
