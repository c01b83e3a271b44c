"""One-class VAE training for anomaly localisation, as a trainee of the shared loop (unit = one epoch).

``AnomalyState`` owns the data sets, the model, Adam, and two generators seeded by ``config.seed``: a CPU one
for the loader's shuffling and MVTec's augmentation, and one on the compute device for z samples. Epoch
boundaries are the only checkpoint points, so saving both generators with the model and optimiser makes a
restored run continue bit-identically on CPU.
"""

from __future__ import annotations

from collections.abc import Sized
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from vae_attention import losses
from vae_attention.attention import check_layer
from vae_attention.config import check_same_config, config_to_dict
from vae_attention.errors import DataError
from vae_attention.models import MNISTConvVAE, ResNet18VAE, UCSDConvVAE
from vae_attention.training.anomaly.config import AnomalyConfig
from vae_attention.training.loop import MetricWindow, default_device


def _limit(dataset: Dataset, limit: int) -> Dataset:
    """The first ``limit`` items (deterministic, for quick runs); the whole set when limit is 0."""
    if limit and limit < len(dataset):
        return Subset(dataset, range(limit))
    return dataset


def build_datasets(config: AnomalyConfig, generator: torch.Generator) -> tuple[Dataset, Dataset]:
    # imported here: the image loaders pull in torchvision and PIL, which building only a model never needs
    from vae_attention.data import MNIST_EVAL_DIGITS, MNISTOneClass, MVTecAD, UCSDPed1

    if config.data_dir is None:
        raise DataError(f"--data-dir is required for the {config.dataset} study (see README 'Data')")
    root, size = config.data_dir, config.resolved_image_size
    if config.dataset == "mnist":
        eval_digits = config.eval_digits or MNIST_EVAL_DIGITS.get(config.digit)
        train = MNISTOneClass(root, config.digit, "train")
        test = MNISTOneClass(root, config.digit, "test", eval_digits=eval_digits)
    elif config.dataset == "ucsd":
        train = UCSDPed1(root, "train", image_size=size)
        test = UCSDPed1(root, "test", image_size=size, include_no_gt=config.gt_policy == "all_clips")
    else:
        train = MVTecAD(root, config.category, "train", image_size=size, augment=config.augment,
                        generator=generator if config.augment else None)
        test = MVTecAD(root, config.category, "test", image_size=size)
    return _limit(train, config.max_train_images), _limit(test, config.max_test_images)


def build_model(config: AnomalyConfig, generator: torch.Generator) -> torch.nn.Module:
    if config.dataset == "mnist":
        return MNISTConvVAE(config.z_dim, generator=generator)
    if config.dataset == "ucsd":
        return UCSDConvVAE(config.z_dim, generator=generator)
    return ResNet18VAE(config.z_dim, config.resolved_image_size, generator=generator)


def check_model(config: AnomalyConfig) -> None:
    """Build the model on CPU and run one blank input through it: a bad layer or size fails here, not later."""
    channels = 3 if config.dataset == "mvtec" else 1
    size = config.resolved_image_size
    check_layer(build_model(config, torch.Generator().manual_seed(0)), config.resolved_layer,
                torch.zeros(1, channels, size, size))


class AnomalyState:
    """Data, model, optimiser and generators of one run; ``advance()`` trains one epoch."""

    step_key = "epoch"
    loss_keys = ("loss", "recon_loss", "kld")

    def __init__(self, config: AnomalyConfig, device: torch.device | str | None = None, datasets=None):
        self.config = config
        self.device = torch.device(device) if device is not None else default_device()
        self.data_generator = torch.Generator().manual_seed(config.seed)
        self.sample_generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.train_set, self.test_set = datasets or build_datasets(config, self.data_generator)
        if not isinstance(self.train_set, Sized) or len(self.train_set) == 0:
            raise DataError(f"the {config.dataset} training set is empty under {config.data_dir}")
        init = torch.Generator().manual_seed(config.seed)
        self.model = build_model(config, init).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=config.betas,
                                          eps=config.adam_eps)
        self.loader = DataLoader(self.train_set, batch_size=config.batch_size, shuffle=True,
                                 generator=self.data_generator, num_workers=0)
        self.epoch = 0
        self.window = MetricWindow()

    # -- the shared loop's trainee interface ---------------------------------------------------------------
    @property
    def progress(self) -> int:
        return self.epoch

    def advance(self) -> None:
        """One epoch over the training set; per-batch losses go to the report window."""
        self.model.train()
        for batch in self.loader:
            x = batch["image"].to(self.device, non_blocking=True)
            out = self.model(x, generator=self.sample_generator)
            recon = losses.bernoulli_recon_loss(out.recon_logits, x)
            kld = losses.gaussian_kl(out.mu, out.logvar)
            loss = recon + kld
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.window.add({"loss": float(loss.detach()), "recon_loss": float(recon.detach()),
                             "kld": float(kld.detach())})
        self.epoch += 1

    def pop_window(self) -> dict[str, float]:
        return self.window.pop()

    def evaluate(self, scratch_dir: Path) -> tuple[dict[str, float], Path]:
        # imported here: evaluation pulls in sklearn and matplotlib, which building a state never needs
        from vae_attention.training.anomaly.evaluate import evaluate

        return evaluate(self, Path(scratch_dir) / f"anomaly_{self.epoch:04d}.png")

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "config": config_to_dict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "data_rng": self.data_generator.get_state(),
            "sample_rng": self.sample_generator.get_state(),
            "window": self.window.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_same_config(state.get("config"), self.config)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.data_generator.set_state(state["data_rng"].cpu())
        self.sample_generator.set_state(state["sample_rng"].cpu())
        self.window.load_state_dict(state["window"])
        self.epoch = int(state["epoch"])

    def weights(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load(self, path: Path) -> None:
        # weights_only: a checkpoint is untrusted input; the state holds only tensors and plain containers.
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
