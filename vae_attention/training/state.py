"""``TrainState``: everything one disentanglement run owns, with an exact save/restore.

It builds models, optimisers and the batch sampler from a ``DisentangleConfig``; ``step()`` draws its own
batches (random indices into the memory-mapped dSprites array, no DataLoader workers) and applies
``train_step``. All randomness comes from two generators seeded by ``config.seed``: a numpy one for batch
indices and a torch one (on the compute device) for z samples, permutations and pair choices. Both are in
``state_dict()``, with the optimisers and the open report window, so ``load_state_dict`` resumes the exact
same trajectory on CPU.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from vae_attention import losses
from vae_attention.config import check_same_config, config_to_dict
from vae_attention.training.config import DisentangleConfig
from vae_attention.training.disentangle import build_models, build_optimizers, train_step

# The held-out subset is the same for every trial (not drawn from the trial seed) so that
# eval_recon_loss is comparable across a sweep.
EVAL_SUBSET_SEED = 2020
EVAL_BATCH = 500


class MetricWindow:
    """Running sums of per-step metrics between two reports; ``means()`` then ``reset()``."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] += value
            self.counts[key] += 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()

    def pop(self) -> dict[str, float]:
        """The means, then a fresh window."""
        means = self.means()
        self.reset()
        return means

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        self.sums.update(state["sums"])
        self.counts.update(state["counts"])


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TrainState:
    """Models, optimisers, sampler and generators of one run; ``step()`` advances one iteration."""

    def __init__(self, config: DisentangleConfig, dataset=None, device: torch.device | str | None = None):
        if dataset is None:
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
        return self.dataset.images(picks).to(self.device, non_blocking=True)

    def step(self) -> dict[str, float]:
        """One optimiser iteration; the metrics are also added to the report window."""
        batch = self._batch()
        batch2 = self._batch() if self.config.uses_discriminator else None
        metrics = train_step(self.models, self.optimizers, batch, batch2, self.config, self.generator)
        self.iteration += 1
        self.window.add(metrics)
        return metrics

    def pop_window(self) -> dict[str, float]:
        """Means of the metrics since the last call (the values a report carries)."""
        return self.window.pop()

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
        }

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
        self.iteration = int(state["iteration"])

    def save(self, path) -> None:
        torch.save(self.state_dict(), path)

    def load(self, path) -> None:
        # weights_only: a checkpoint is untrusted input; the state holds only tensors and plain containers.
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
