"""Restricted Boltzmann machines and a greedily trained stack of them (the report's extension, its §3.4.2).

One RBM has visible units v ∈ [0, 1]^n (Bernoulli; real values in [0, 1] are read as probabilities), hidden
units h ∈ {0, 1}^m (``hidden="binary"``, what the report's code samples) or h ∈ {−1, +1}^m (``hidden="spin"``,
what its text says), weights W (m × n), visible bias b (n) and hidden bias c (m). With a = c + W v:

    E(v, h) = −b·v − c·h − hᵀ W v                              (both kinds)
    F(v)    = −log Σ_h exp(−E(v, h))
            = −b·v − Σ_j softplus(a_j)                          binary: Σ_{h_j∈{0,1}} e^{h_j a_j} = 1 + e^{a_j}
            = −b·v − Σ_j log(2 cosh a_j)                        spin:   Σ_{h_j∈{±1}} e^{h_j a_j} = 2 cosh a_j
    binary: P(h_j = 1 | v) = σ(a_j),    E[h_j | v] = σ(a_j)
    spin:   P(h_j = +1 | v) = σ(2 a_j), E[h_j | v] = tanh(a_j)
    P(v_i = 1 | h) = σ(b_i + (Wᵀ h)_i)                          (both kinds)

Contrastive divergence (CD-k): the log-likelihood gradient is −∂F(v_data)/∂θ + E_model[∂F(v)/∂θ]; CD-k estimates
the model term with v_k, k Gibbs steps from the data (PCD: from persistent chains that carry over between
updates). Minimising the surrogate ``mean F(v_data) − mean F(v_k)`` (v_k detached) gives exactly that gradient.

Every sampler takes an optional ``torch.Generator``; with a seeded generator on CPU a run is bit-reproducible.
The PCD chains are a buffer (``persistent_chains``), so they are in ``state_dict`` and a checkpoint resumes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vae_attention.errors import ConfigError

HiddenKind = Literal["binary", "spin"]
HIDDEN_KINDS = ("binary", "spin")
# The report's sizes (Carmoondedraak/FACT-2021): square numbers, so each layer can be shown as an image.
REPORT_RBM_SIZES = (784, 784, 625, 484, 324, 256, 169, 64, 36)


def _bernoulli(p: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.bernoulli(p.detach(), generator=generator)


def log_2cosh(a: torch.Tensor) -> torch.Tensor:
    """log(2 cosh a) = |a| + log(1 + e^{−2|a|}), stable for any a."""
    return a.abs() + F.softplus(-2.0 * a.abs())


@dataclass
class CDResult:
    """One CD/PCD evaluation. ``loss`` carries the gradient; the rest are detached scalars / tensors."""

    loss: torch.Tensor  # mean F(v_data) − mean F(v_model)
    recon_error: torch.Tensor  # per-unit MSE of the mean-field reconstruction σ(b + Wᵀ E[h|v]) against v
    free_energy_data: torch.Tensor  # mean F over the batch
    free_energy_model: torch.Tensor  # mean F over the negative samples
    v_model: torch.Tensor  # the negative samples (B or n_chains, n_visible)


class RBM(nn.Module):
    """A Bernoulli–Bernoulli (``hidden="binary"``) or Bernoulli–spin (``hidden="spin"``) RBM; see the module doc.

    W ~ N(0, init_std²) drawn from ``generator`` (the report's code: 0.01), both biases zero.
    """

    def __init__(self, n_visible: int, n_hidden: int, hidden: HiddenKind = "binary", *, init_std: float = 0.01,
                 generator: torch.Generator | None = None):
        super().__init__()
        if hidden not in HIDDEN_KINDS:
            raise ConfigError(f"rbm hidden={hidden!r} is not one of {', '.join(HIDDEN_KINDS)}")
        if n_visible < 1 or n_hidden < 1:
            raise ConfigError(f"RBM sizes must be positive, got {n_visible} visible, {n_hidden} hidden")
        self.n_visible, self.n_hidden, self.hidden = n_visible, n_hidden, hidden
        self.W = nn.Parameter(torch.randn(n_hidden, n_visible, generator=generator) * init_std)
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))
        # PCD chains (n_chains, n_visible); empty until the first persistent update.
        self.register_buffer("persistent_chains", torch.empty(0, n_visible))

    def extra_repr(self) -> str:
        return f"n_visible={self.n_visible}, n_hidden={self.n_hidden}, hidden={self.hidden!r}"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The chain count is fixed at the first PCD update, so a fresh module's empty buffer takes the saved shape.
        saved = state_dict.get(prefix + "persistent_chains")
        if saved is not None and saved.shape != self.persistent_chains.shape:
            self.persistent_chains = torch.empty_like(saved, device=self.persistent_chains.device,
                                                      dtype=self.persistent_chains.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- closed forms ------------------------------------------------------------------------------------------
    def hidden_preactivation(self, v: torch.Tensor) -> torch.Tensor:
        """a = c + W v, shape (B, n_hidden)."""
        return F.linear(v.flatten(1), self.W, self.hidden_bias)

    def visible_preactivation(self, h: torch.Tensor) -> torch.Tensor:
        """b + Wᵀ h, shape (B, n_visible)."""
        return F.linear(h, self.W.t(), self.visible_bias)

    def energy(self, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """E(v, h) = −b·v − c·h − hᵀ W v per row, shape (B,). h must hold the kind's values ({0,1} or {±1})."""
        v = v.flatten(1)
        return -(v @ self.visible_bias) - (h @ self.hidden_bias) - ((h @ self.W) * v).sum(1)

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = −log Σ_h exp(−E(v, h)) in closed form, shape (B,)."""
        v = v.flatten(1)
        a = self.hidden_preactivation(v)
        hidden_term = F.softplus(a) if self.hidden == "binary" else log_2cosh(a)
        return -(v @ self.visible_bias) - hidden_term.sum(1)

    # ---- conditionals and sampling -----------------------------------------------------------------------------
    def hidden_prob(self, v: torch.Tensor) -> torch.Tensor:
        """P(h_j "on" | v): P(h_j = 1) = σ(a_j) for binary, P(h_j = +1) = σ(2 a_j) for spin. In [0, 1]."""
        a = self.hidden_preactivation(v)
        return torch.sigmoid(a if self.hidden == "binary" else 2.0 * a)

    def hidden_mean(self, v: torch.Tensor) -> torch.Tensor:
        """E[h | v]: σ(a) for binary, tanh(a) for spin."""
        a = self.hidden_preactivation(v)
        return torch.sigmoid(a) if self.hidden == "binary" else torch.tanh(a)

    def visible_prob(self, h: torch.Tensor) -> torch.Tensor:
        """P(v_i = 1 | h) = σ(b_i + (Wᵀ h)_i)."""
        return torch.sigmoid(self.visible_preactivation(h))

    def sample_hidden(self, v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """h ~ p(h | v) in the kind's values: {0, 1} or {−1, +1}."""
        on = _bernoulli(self.hidden_prob(v), generator)
        return on if self.hidden == "binary" else 2.0 * on - 1.0

    def sample_visible(self, h: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """v ~ p(v | h) in {0, 1}."""
        return _bernoulli(self.visible_prob(h), generator)

    def gibbs(self, v: torch.Tensor, k: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """k full Gibbs sweeps v → h → v' from ``v`` (no gradient); returns the visible sample v_k ∈ {0, 1}."""
        if k < 1:
            raise ConfigError(f"Gibbs steps k must be >= 1, got {k}")
        with torch.no_grad():
            v = v.flatten(1)
            for _ in range(k):
                v = self.sample_visible(self.sample_hidden(v, generator), generator)
        return v

    def reconstruct(self, v: torch.Tensor) -> torch.Tensor:
        """Deterministic mean-field reconstruction σ(b + Wᵀ E[h | v]), shape (B, n_visible)."""
        return self.visible_prob(self.hidden_mean(v))

    def reconstruction_error(self, v: torch.Tensor) -> torch.Tensor:
        """Mean squared error per unit between ``v`` and its mean-field reconstruction (a detached scalar)."""
        with torch.no_grad():
            v = v.flatten(1)
            return (self.reconstruct(v) - v).pow(2).mean()

    # ---- learning ----------------------------------------------------------------------------------------------
    def reset_chains(self) -> None:
        """Forget the PCD chains; the next persistent update starts them from its batch again."""
        self.persistent_chains = self.persistent_chains.new_empty(0, self.n_visible)

    def contrastive_divergence(self, v: torch.Tensor, k: int = 1, *, persistent: bool = False,
                               generator: torch.Generator | None = None) -> CDResult:
        """The CD-k (or PCD-k) surrogate loss on the batch ``v`` ∈ [0, 1]; ``loss.backward()`` gives the gradient.

        CD-k: chains start at the batch itself. PCD-k: chains start at ``persistent_chains`` (initialised on
        first use as a Bernoulli sample of the batch, so the chain count is that batch's size) and their state
        after k sweeps is stored back. Positive statistics use ``v`` as given (probabilities are allowed).
        """
        v = v.flatten(1)
        if persistent:
            if self.persistent_chains.shape[0] == 0:
                self.persistent_chains = _bernoulli(v, generator).to(self.persistent_chains.dtype)
            start = self.persistent_chains
        else:
            start = v
        v_model = self.gibbs(start, k, generator)
        if persistent:
            self.persistent_chains = v_model.detach().clone()
        f_data, f_model = self.free_energy(v).mean(), self.free_energy(v_model).mean()
        return CDResult(loss=f_data - f_model, recon_error=self.reconstruction_error(v),
                        free_energy_data=f_data.detach(), free_energy_model=f_model.detach(), v_model=v_model)


class StackedRBM(nn.Module):
    """RBMs stacked bottom-up: layer i has ``sizes[i]`` visible and ``sizes[i+1]`` hidden units.

    Layer i is trained (greedily, with the layers below frozen) on ``transform(v, i)``, the hidden probabilities
    P(h "on" | ·) of the layers below propagated deterministically; for spin layers that is P(h = +1 | ·), i.e.
    the next layer's {0, 1} visible unit stands for h = +1.
    """

    def __init__(self, sizes: Sequence[int] = REPORT_RBM_SIZES, hidden: HiddenKind = "binary", *,
                 init_std: float = 0.01, generator: torch.Generator | None = None):
        super().__init__()
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2:
            raise ConfigError(f"rbm sizes need at least two entries (visible, hidden), got {sizes}")
        self.sizes = sizes
        self.layers = nn.ModuleList(RBM(sizes[i], sizes[i + 1], hidden, init_std=init_std, generator=generator)
                                    for i in range(len(sizes) - 1))

    def __len__(self) -> int:
        return len(self.layers)

    def _check_layer(self, layer: int, allow_top: bool = False) -> int:
        top = len(self.layers) if allow_top else len(self.layers) - 1
        if not 0 <= layer <= top:
            raise ConfigError(f"rbm layer {layer} is outside 0..{top} for sizes {'-'.join(map(str, self.sizes))}")
        return layer

    def transform(self, v: torch.Tensor, upto: int) -> torch.Tensor:
        """The input of layer ``upto``: v flattened, then the hidden probabilities of layers 0..upto−1 in turn.

        ``transform(v, 0)`` is v itself; ``transform(v, len(self))`` is the top layer's hidden probabilities.
        Differentiable (no sampling), so gradients reach v.
        """
        x = v.flatten(1)
        for rbm in self.layers[: self._check_layer(upto, allow_top=True)]:
            x = rbm.hidden_prob(x)
        return x

    def free_energy(self, v: torch.Tensor, layer: int) -> torch.Tensor:
        """F of layer ``layer`` on its own input ``transform(v, layer)``, shape (B,)."""
        return self.layers[self._check_layer(layer)].free_energy(self.transform(v, layer))

    def square_side(self, layer: int) -> int:
        """√(hidden units of ``layer``) when that is a whole number (for showing a layer as an image), else error."""
        n = self.sizes[self._check_layer(layer) + 1]
        side = math.isqrt(n)
        if side * side != n:
            raise ConfigError(f"rbm layer {layer} has {n} hidden units, not a square number; cannot show it as a grid")
        return side


def cd_step(stack: StackedRBM, layer: int, v: torch.Tensor, optimizer: torch.optim.Optimizer, *, k: int = 1,
            persistent: bool = False, sample_input: bool = False,
            generator: torch.Generator | None = None) -> dict[str, float]:
    """One CD-k / PCD-k update of layer ``layer`` of ``stack`` on the image batch ``v``, with ``optimizer``.

    The layer's input is ``stack.transform(v, layer)`` (no gradient into lower layers); ``sample_input=True``
    feeds a Bernoulli sample of it instead (the report's code binarises images this way). ``optimizer`` may hold
    the whole stack's parameters: only this layer's receive gradients. Returns floats: ``cd_loss`` (the surrogate
    F(data) − F(model)), ``recon_error`` (mean-field, before the update), ``free_energy_data``, ``free_energy_model``.
    """
    rbm = stack.layers[stack._check_layer(layer)]
    with torch.no_grad():
        x = stack.transform(v, layer)
        if sample_input:
            x = _bernoulli(x, generator)
    result = rbm.contrastive_divergence(x, k, persistent=persistent, generator=generator)
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    optimizer.step()
    return {"cd_loss": float(result.loss.detach()), "recon_error": float(result.recon_error),
            "free_energy_data": float(result.free_energy_data), "free_energy_model": float(result.free_energy_model)}
