"""``DisentangleState``: everything one disentanglement run owns, with an exact save/restore; the shared
loop's trainee (unit = one optimiser iteration).

It builds models, optimisers and the batch sampler from a ``DisentangleConfig``; ``step()`` draws its own
batches (random indices into the memory-mapped dSprites array, no DataLoader workers) and applies
``train_step``. All randomness comes from two generators seeded by ``config.seed``: a numpy one for batch
indices and a torch one (on the compute device) for z samples, permutations and pair choices. Both are in
``state_dict()``, with the optimisers and the open report window, so ``load_state_dict`` resumes the exact
same trajectory on CPU. Under ``loop_order="deferred"`` the gradients waiting in ``.grad`` for the next
iteration's optimiser steps are saved too (``pending_grads``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vae_attention import losses
from vae_attention.config import check_same_config, config_to_dict
from vae_attention.training.disentangle.config import DisentangleConfig
from vae_attention.training.disentangle.step import build_models, build_optimizers, train_step_tensors
from vae_attention.training.loop import MetricWindow, default_device

# The held-out subset is the same for every trial (not drawn from the trial seed) so that
# eval_recon_loss is comparable across a sweep.
EVAL_SUBSET_SEED = 2020
EVAL_BATCH = 500


class DisentangleState:
    """Models, optimisers, sampler and generators of one run; ``step()`` advances one iteration."""

    step_key = "iteration"
    loss_keys = ("recon_loss", "kld", "vae_loss", "d_loss", "tc", "ad_loss")

    def __init__(self, config: DisentangleConfig, dataset=None, device: torch.device | str | None = None):
        if dataset is None:
            # imported here: the data package pulls in torchvision and PIL (for the anomaly image loaders)
            from vae_attention.data import DSprites

            dataset = DSprites(config.data_dir)
        self.config = config
        self.dataset = dataset
        self.device = torch.device(device) if device is not None else default_device()
        self.models = build_models(config, self.device)
        self.optimizers = build_optimizers(config, self.models)
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.iteration = 0
        self.window = MetricWindow()

        eval_size = min(config.eval_size, dataset.num_images // 5)
        subset_rng = np.random.default_rng(EVAL_SUBSET_SEED)
        self.eval_indices = np.sort(subset_rng.choice(dataset.num_images, size=eval_size, replace=False))
        self.train_indices = np.setdiff1d(np.arange(dataset.num_images), self.eval_indices)

    def _batch(self) -> torch.Tensor:
        picks = self.train_indices[self.rng.integers(0, len(self.train_indices), self.config.batch_size)]
        # on CUDA the packed images live on the device and batches are unpacked there (no host copy per step)
        return self.dataset.images(picks, device=self.device)

    def step(self) -> dict[str, torch.Tensor]:
        """One optimiser iteration; its metrics (0-d tensors on the device, not read back: no host sync per step)
        are also summed into the report window, in float64 on the device."""
        batch = self._batch()
        batch2 = self._batch() if self.config.uses_discriminator else None
        metrics = train_step_tensors(self.models, self.optimizers, batch, batch2, self.config, self.generator)
        self.iteration += 1
        self.window.add({k: v.double() for k, v in metrics.items()})
        return metrics

    def pop_window(self) -> dict[str, float]:
        """Means of the metrics since the last call (the values a report carries; read from the device here)."""
        return {k: float(v) for k, v in self.window.pop().items()}

    # -- the shared loop's trainee interface ---------------------------------------------------------------
    @property
    def progress(self) -> int:
        return self.iteration

    def advance(self) -> None:
        self.step()

    def evaluate(self, scratch_dir: Path) -> tuple[dict[str, float], list[Path]]:
        """Held-out recon, both FactorVAE metrics and the figure files written into ``scratch_dir``: attention,
        latent/attention traversals (PNG grid and GIF) and reconstructions (see ``evaluate.py``)."""
        # imported here: evaluation pulls in matplotlib, which building a state (e.g. on the driver) never needs
        from vae_attention.training.disentangle.evaluate import evaluate, evaluation_figures

        figures = evaluation_figures(self, Path(scratch_dir))
        return evaluate(self), figures

    def weights(self) -> dict[str, torch.Tensor]:
        return self.models.vae.state_dict()

    @torch.no_grad()
    def representation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²) in eval mode, on CPU: the representation the disentanglement metric scores."""
        vae = self.models.vae
        was_training = vae.training
        vae.eval()
        try:
            mu, logvar = vae.encode(torch.as_tensor(x).to(self.device))
        finally:
            vae.train(was_training)
        return mu.cpu(), logvar.cpu()

    @torch.no_grad()
    def eval_recon_loss(self) -> float:
        """Bernoulli recon loss (nats/image) of μ-decodes over the fixed held-out images."""
        if len(self.eval_indices) == 0:
            return float("nan")
        vae = self.models.vae
        was_training = vae.training
        vae.eval()
        total = 0.0
        try:
            for start in range(0, len(self.eval_indices), EVAL_BATCH):
                x = self.dataset.images(self.eval_indices[start : start + EVAL_BATCH]).to(self.device)
                total += float(losses.bernoulli_recon_loss(vae(x).recon_logits, x)) * x.shape[0]
        finally:
            vae.train(was_training)
        return total / len(self.eval_indices)

    def state_dict(self) -> dict[str, Any]:
        vae, disc = self.models
        vae_opt, d_opt = self.optimizers
        return {
            "iteration": self.iteration,
            "config": config_to_dict(self.config),
            "vae": vae.state_dict(),
            "discriminator": disc.state_dict() if disc is not None else None,
            "vae_optimizer": vae_opt.state_dict(),
            "d_optimizer": d_opt.state_dict() if d_opt is not None else None,
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": self.generator.get_state(),
            "window": self.window.state_dict(),
            **({"pending_grads": self._pending_grads()} if self.config.loop_order == "deferred" else {}),
        }

    def _named_parameters(self) -> dict[str, dict[str, torch.nn.Parameter]]:
        vae, disc = self.models
        named = {"vae": dict(vae.named_parameters())}
        if disc is not None:
            named["discriminator"] = dict(disc.named_parameters())
        return named

    def _pending_grads(self) -> dict[str, dict[str, torch.Tensor]]:
        """The gradients a deferred iteration left for the next one's optimiser steps (none before the first)."""
        return {model: {name: p.grad.detach().clone() for name, p in params.items() if p.grad is not None}
                for model, params in self._named_parameters().items()}

    def _load_pending_grads(self, pending: dict[str, dict[str, torch.Tensor]]) -> None:
        for model, params in self._named_parameters().items():
            saved = pending.get(model, {})
            for name, p in params.items():
                p.grad = saved[name].to(p.device).clone() if name in saved else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_same_config(state.get("config"), self.config)
        vae, disc = self.models
        vae_opt, d_opt = self.optimizers
        vae.load_state_dict(state["vae"])
        vae_opt.load_state_dict(state["vae_optimizer"])
        if disc is not None:
            disc.load_state_dict(state["discriminator"])
            d_opt.load_state_dict(state["d_optimizer"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.generator.set_state(state["torch_rng"].cpu())
        self.window.load_state_dict(state["window"])
        if self.config.loop_order == "deferred":
            self._load_pending_grads(state["pending_grads"])
        self.iteration = int(state["iteration"])

    def save(self, path) -> None:
        torch.save(self.state_dict(), path)

    def load(self, path) -> None:
        # weights_only: a checkpoint is untrusted input; the state holds only tensors and plain containers.
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
