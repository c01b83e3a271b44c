"""∂μ_i/∂A written out as layers: the chain rule through the encoder layers above an attention layer.

For the dSprites VAEs the layers from an attention layer's output A to the encoder's output are a chain of
convolutions, linear layers and ReLUs. With the ReLU masks of the forward pass fixed, the map from a change of
A to a change of μ is linear, and its transpose applied to a one-hot seed e_i is ∂μ_i/∂A:

    ∂μ_i/∂A = T_1 ∘ M_1 ∘ T_2 ∘ … ∘ M_L ∘ T_L (e_i),   T = the layer's transpose (conv → conv_transpose2d,
                                                        linear → Wᵀ), M = the ReLU mask (A_l > 0)

``EncoderChain`` computes exactly this with ordinary differentiable ops, so L_AD's gradient through the maps
is a first-order backward of those ops. Autograd's own route (``torch.autograd.grad(create_graph=True)``)
gives the same numbers, but differentiates ``convolution_backward`` a second time, and PyTorch computes that
double backward's weight gradient as a convolution of transposed tensors (a 16×16 "kernel" for the dSprites
VAE's second conv) that oneDNN runs slowly: on 2 CPU threads the 10-map AD-FactorVAE step is ~7 % faster this
way (``python -m benchmarks.step``), with the same losses to the last printed digit. A ReLU's derivative at 0
is 0 in both (PyTorch's ``threshold_backward`` and the mask ``A > 0``). The masks and shapes come from one
re-run of the layers above A without a graph (~1 of the AD step's 41 GFLOP at the first conv; ``top2`` runs it
twice, for its ranking and for the chosen pair): the forward's own values, as the layers are deterministic.

Applies when the model's own class opts in (``mu_is_leading_encoder_output`` set on the class itself, not
inherited: a subclass may change ``encode``; μ = the first z entries of the flattened ``model.encoder``
output), the attention layer is a direct child ``encoder.N`` of that ``nn.Sequential``, and every later layer
is exactly a ``Conv2d`` (one group, no dilation, zero padding), ``Linear``, ``ReLU``, ``Flatten`` or
``Identity``; ``EncoderChain.after`` returns None otherwise and callers use autograd. The re-run uses the
layers' weights through ``torch.nn.functional`` (no module hooks run, no in-place ReLU touches A). The
activation must be float32 (a bf16 forward's masks would differ from a float32 re-run).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vae_attention.errors import ConfigError

_SUPPORTED = (nn.Conv2d, nn.Linear, nn.ReLU, nn.Flatten, nn.Identity)


def _supported(layer: nn.Module) -> bool:
    if type(layer) is nn.Conv2d:  # exactly: a subclass may change its forward
        return layer.groups == 1 and tuple(layer.dilation) == (1, 1) and layer.padding_mode == "zeros" \
            and not isinstance(layer.padding, str)
    if type(layer) is nn.Flatten:
        return layer.start_dim == 1 and layer.end_dim == -1
    return type(layer) in _SUPPORTED


def _forward(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The layer's function on ``h`` (functional: no hooks, never in place)."""
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(h, layer.weight, layer.bias, layer.stride, layer.padding)
    if isinstance(layer, nn.Linear):
        return F.linear(h, layer.weight, layer.bias)
    if isinstance(layer, nn.ReLU):
        return F.relu(h)
    if isinstance(layer, nn.Flatten):
        return h.flatten(1)
    return h


class EncoderChain:
    """The encoder layers above one attention layer, able to give ∂μ_i/∂A for chosen dims i."""

    def __init__(self, layers: Sequence[nn.Module]):
        self.layers = tuple(layers)

    @classmethod
    def after(cls, model: nn.Module, layer: str) -> EncoderChain | None:
        """The chain above ``layer`` of ``model`` (e.g. ``"encoder.0"``), or None where it does not apply."""
        encoder = getattr(model, "encoder", None)
        prefix, _, index = layer.partition(".")
        if not vars(type(model)).get("mu_is_leading_encoder_output", False) or prefix != "encoder" \
                or not isinstance(encoder, nn.Sequential) or not index.isdigit() or int(index) >= len(encoder):
            return None
        layers = list(encoder)[int(index) + 1:]
        if not layers or not all(_supported(m) for m in layers):
            return None
        return cls(layers)

    def _forward_record(self, activation: torch.Tensor) -> list[tuple[torch.Size, torch.Tensor | None]]:
        """Each layer's input shape and, for a ReLU, its mask, from the activation (no graph): the forward's."""
        records = []
        with torch.no_grad():
            h = activation.detach()
            for layer in self.layers:
                records.append((h.shape, h > 0 if isinstance(layer, nn.ReLU) else None))
                h = _forward(layer, h)
        records.append((h.shape, None))  # the encoder's output: (B, 2z) or (B, 2z, 1, 1)
        return records

    def _transpose(self, seed: torch.Tensor, records) -> torch.Tensor:
        g = seed
        for layer, (shape, mask) in zip(reversed(self.layers), reversed(records[:-1]), strict=True):
            if isinstance(layer, nn.Linear):
                g = g @ layer.weight
            elif isinstance(layer, nn.ReLU):
                g = g * mask
            elif isinstance(layer, nn.Flatten):
                g = g.reshape(shape)
            elif isinstance(layer, nn.Conv2d):
                # the input size a strided conv maps onto this output is ambiguous: output_padding picks shape
                extra = [size - ((out - 1) * stride - 2 * pad + kernel)
                         for size, out, stride, pad, kernel in
                         zip(shape[-2:], g.shape[-2:], layer.stride, layer.padding, layer.kernel_size, strict=True)]
                g = F.conv_transpose2d(g, layer.weight, stride=layer.stride, padding=layer.padding,
                                       output_padding=extra)
        return g

    def per_dim_gradients(self, activation: torch.Tensor, index: torch.Tensor, *, create_graph: bool):
        """∂μ_{b, index[b, j]}/∂A_b for each slot j, one at a time: a generator of (B, K, h, w) tensors.

        ``create_graph=False`` computes them without a graph (detached). The activation must be float32.
        """
        if activation.dtype != torch.float32:
            raise ConfigError(f"the encoder chain needs a float32 activation, got {activation.dtype}: use "
                              "grad_method auto or loop with precision=bf16")
        records = self._forward_record(activation)
        out_shape = records[-1][0]
        graph = create_graph and torch.is_grad_enabled()
        for column in index.t():  # (B,) dims of slot j
            seed = F.one_hot(column, out_shape[1]).to(activation.dtype)  # (B, 2z): 1 at μ_i, 0 elsewhere
            with torch.set_grad_enabled(graph):
                grad = self._transpose(seed.reshape(out_shape), records)
            yield grad
