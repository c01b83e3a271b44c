"""The RBM study's update, without any loop or Ray: build the stack and its optimisers, one epoch of one layer.

``build_stack`` initialises W ~ N(0, init_std²) from the config's seed on CPU (so every device starts from the same
weights); ``build_optimizers`` gives every layer its own SGD (only the layer being trained steps; a per-layer
optimiser keeps a momentum buffer from leaking across layers). ``layer_epoch`` is one pass over the training
images for layer ℓ: each batch is binarised by a Bernoulli draw when ``sample_input`` (the report's
``data.bernoulli()``), propagated through layers 0..ℓ−1 as hidden probabilities, and given one CD-k / PCD-k
update (``vae_attention.models.rbm.cd_step``). ``free_energy_gap`` is the overfitting monitor of Hinton's
practical guide (2010, §6): mean F of held-out images minus mean F of as many training images, under the layer
being trained; it grows when the layer starts to prefer its training images.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from vae_attention.models.rbm import StackedRBM, cd_step
from vae_attention.training.loop import MetricWindow
from vae_attention.training.rbm.config import RBMConfig


def build_stack(config: RBMConfig, device: torch.device | str = "cpu") -> StackedRBM:
    init = torch.Generator().manual_seed(config.seed)
    return StackedRBM(config.sizes, config.hidden, init_std=config.init_std, generator=init).to(device)


def build_optimizers(config: RBMConfig, stack: StackedRBM) -> list[torch.optim.Optimizer]:
    return [torch.optim.SGD(rbm.parameters(), lr=config.lr, momentum=config.momentum) for rbm in stack.layers]


def layer_epoch(config: RBMConfig, stack: StackedRBM, layer: int, loader: DataLoader,
                optimizer: torch.optim.Optimizer, generator: torch.Generator, window: MetricWindow,
                device: torch.device) -> None:
    """One epoch of CD updates of ``layer``; per-batch ``cd_loss``, ``recon_error``, free energies go to ``window``."""
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True).flatten(1)
        if config.sample_input:
            x = torch.bernoulli(x, generator=generator)
        window.add(cd_step(stack, layer, x, optimizer, k=config.k, persistent=config.persistent,
                           generator=generator))


@torch.no_grad()
def free_energy_gap(stack: StackedRBM, layer: int, train_images: torch.Tensor, heldout_images: torch.Tensor) -> float:
    """mean F_ℓ(held-out) − mean F_ℓ(training), in nats per image, F_ℓ the free energy of layer ℓ on its input."""
    return float(stack.free_energy(heldout_images, layer).mean() - stack.free_energy(train_images, layer).mean())
