"""A trial's final weights as a servable torch module: what the MLflow callback logs as the trial's MLflow model.

The driver rebuilds the trial's VAE from its params with the builder the trial used, loads the final
checkpoint's ``vae.pt`` into it and wraps it in ``Reconstructor``, whose ``forward(x)`` returns one tensor (MLflow's
pytorch pyfunc serves models with a single output tensor): the reconstruction of ``x`` in input space, decoded
from the posterior mean μ (eval mode), i.e. sigmoid(decoder logits) for Bernoulli-trained models and the decoder
output itself for the report's MSE-trained MVTec model. The VAE stays reachable as ``.vae`` (``encode``,
``decode``, the attention layers). The module is pickled by reference, so loading it needs this package.

The RBM study's trials log no MLflow model (a stack of RBMs is no VAE with one input and one output).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


class Reconstructor(nn.Module):
    """``forward(x)`` = the μ-decoded reconstruction of ``x`` (B, C, H, W) in input space, (B, C, H, W)."""

    def __init__(self, vae: nn.Module, recon_is_logits: bool = True):
        super().__init__()
        self.vae = vae
        self.recon_is_logits = recon_is_logits
        self.eval()  # z = μ: deterministic reconstructions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        decoded = self.vae(x).recon_logits
        return torch.sigmoid(decoded) if self.recon_is_logits else decoded


@dataclass(frozen=True)
class ServedModel:
    """The module to log and an input example: one blank image of the trial's input shape (1, C, H, W), float32."""

    module: Reconstructor
    input_example: np.ndarray


def _disentangle(params: dict[str, Any], weights: dict[str, torch.Tensor]) -> ServedModel:
    from search_spaces.disentangle import trial_configs
    from vae_attention.training.disentangle.step import build_vae

    config, _ = trial_configs(params)
    vae = build_vae(config)
    vae.load_state_dict(weights)
    return ServedModel(Reconstructor(vae), np.zeros((1, 1, 64, 64), np.float32))  # dSprites: 64×64 binary images


def _anomaly(params: dict[str, Any], weights: dict[str, torch.Tensor]) -> ServedModel:
    from search_spaces.anomaly import trial_config
    from vae_attention.training.anomaly.state import build_model

    config = trial_config(params)
    vae = build_model(config, torch.Generator().manual_seed(0))  # the weights replace the initialisation
    vae.load_state_dict(weights)
    size = config.resolved_image_size
    return ServedModel(Reconstructor(vae, config.recon_is_logits),
                       np.zeros((1, config.in_channels, size, size), np.float32))


BUILDERS: dict[str, Callable[[dict[str, Any], dict[str, torch.Tensor]], ServedModel]] = {
    "disentangle": _disentangle, "anomaly": _anomaly}


def served_model(kind: str | None, params: dict[str, Any], weights: dict[str, torch.Tensor]) -> ServedModel | None:
    """The trial's VAE with ``weights`` loaded, ready to log; None for a study without one (``kind``: the plan's)."""
    builder = BUILDERS.get(kind or "")
    return builder(params, weights) if builder is not None else None
