"""The RBM study's run as a trainee of the shared loop (unit = one epoch): a stack trained greedily, then a VAE.

Epoch e < layers × epochs_per_layer trains layer e // epochs_per_layer of the stack (epoch e % epochs_per_layer
of it) on the hidden probabilities of the layers below; later epochs train the anomaly study's MNIST VAE
(``AnomalyState`` under ``AnomalyConfig``'s defaults for MNIST, see ``vae_config``) on the same training images,
for the comparison on the same test images.

Generators, all seeded by ``config.seed``: a CPU one for the loader's shuffling, one on the compute device for
every Bernoulli draw (input binarisation, Gibbs sweeps, PCD chain initialisation), and the VAE's own two. The
checkpoint holds them with the stack (whose buffers hold the PCD chains), every layer's optimiser, the report
window and the VAE's state, so a run restored at any epoch boundary, also in the middle of a layer's epochs,
continues bit-identically on CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from vae_attention.config import check_same_config, config_to_dict
from vae_attention.errors import DataError
from vae_attention.training.anomaly import AnomalyConfig, AnomalyState
from vae_attention.training.loop import MetricWindow, default_device
from vae_attention.training.rbm.config import RBMConfig
from vae_attention.training.rbm.step import build_optimizers, build_stack, free_energy_gap, layer_epoch


class RBMData(NamedTuple):
    train: Dataset  # the inlier digit's training images (items: dict(image=(1, 28, 28) float in [0, 1], ...))
    test: Dataset  # inlier (label 0) and outlier-digit (label 1) test images: image AUROC
    pasted: Dataset  # inlier test images with a pasted element and its pixel mask: pixel AUROC and IoU


def _limit(dataset: Dataset, limit: int) -> Dataset:
    return Subset(dataset, range(limit)) if limit and limit < len(dataset) else dataset


def build_data(config: RBMConfig) -> RBMData:
    """The official MNIST files under ``config.data_dir``: one-class train/test sets and the pasted test set."""
    # imported here: the loaders pull in torchvision and PIL, which building a stack never needs
    from vae_attention.data import MNIST_EVAL_DIGITS, MNISTOneClass
    from vae_attention.data.pasted_mnist import PastedMNIST

    if config.data_dir is None:
        raise DataError("--data-dir is required for the rbm study (MNIST IDX files; see README 'Data')")
    eval_digits = config.eval_digits or MNIST_EVAL_DIGITS.get(config.digit)
    train = MNISTOneClass(config.data_dir, config.digit, "train")
    test = MNISTOneClass(config.data_dir, config.digit, "test", eval_digits=eval_digits)
    pasted = PastedMNIST(config.data_dir, config.digit, eval_digits=eval_digits, seed=config.paste_seed)
    return RBMData(_limit(train, config.max_train_images), _limit(test, config.max_test_images),
                   _limit(pasted, config.max_test_images))


def vae_config(config: RBMConfig) -> AnomalyConfig:
    """The anomaly study's MNIST VAE (``AnomalyConfig`` defaults) on this run's digit, seed, data and attention mode
    (at least one epoch, for its schedule; with ``vae_epochs=0`` it stays untrained)."""
    return AnomalyConfig(dataset="mnist", digit=config.digit, eval_digits=config.eval_digits, lr=config.vae_lr,
                         attention=config.vae_attention,
                         epochs=max(config.vae_epochs, 1), batch_size=config.vae_batch_size, seed=config.seed,
                         max_train_images=config.max_train_images, max_test_images=config.max_test_images,
                         report_every=1, checkpoint_every=1, eval_every=1, data_dir=config.data_dir)


def _images(dataset: Dataset, count: int, keep=lambda item: True) -> torch.Tensor:
    """The first ``count`` images of ``dataset`` whose item passes ``keep``, as (n, 784)."""
    chosen = []
    for i in range(len(dataset)):
        item = dataset[i]
        if keep(item):
            chosen.append(item["image"].flatten())
            if len(chosen) == count:
                break
    if not chosen:
        raise DataError("no images for the free-energy gap (empty training set or no inlier test images)")
    return torch.stack(chosen)


class RBMState:
    """Stack, per-layer optimisers, VAE and generators of one run; ``advance()`` trains one epoch."""

    step_key = "epoch"
    loss_keys = ("cd_loss", "recon_error", "loss")

    def __init__(self, config: RBMConfig, device: torch.device | str | None = None, data: RBMData | None = None):
        self.config = config
        self.device = torch.device(device) if device is not None else default_device()
        self.data = data or build_data(config)
        if len(self.data.train) == 0:
            raise DataError(f"no training images of digit {config.digit} under {config.data_dir}")
        self.data_generator = torch.Generator().manual_seed(config.seed)
        self.sample_generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.stack = build_stack(config, self.device)
        self.optimizers = build_optimizers(config, self.stack)
        self.loader = DataLoader(self.data.train, batch_size=config.batch_size, shuffle=True,
                                 generator=self.data_generator, num_workers=0)
        n = config.heldout_images
        self.gap_train = _images(self.data.train, n).to(self.device)
        self.gap_heldout = _images(self.data.test, n, lambda item: item["label"] == 0).to(self.device)
        self.vae = AnomalyState(vae_config(config), device=self.device, datasets=(self.data.train, self.data.test))
        self.epoch = 0
        self.window = MetricWindow()

    @property
    def layer(self) -> int:
        """The stack layer the next epoch trains (``layers`` once the stack is done and the VAE trains)."""
        return min(self.epoch // self.config.epochs_per_layer, self.config.layers)

    # -- the shared loop's trainee interface ---------------------------------------------------------------
    @property
    def progress(self) -> int:
        return self.epoch

    def advance(self) -> None:
        cfg = self.config
        if self.epoch < cfg.stack_epochs:
            layer = self.layer
            self.stack.train()
            layer_epoch(cfg, self.stack, layer, self.loader, self.optimizers[layer], self.sample_generator,
                        self.window, self.device)
            self.window.add({"free_energy_gap": free_energy_gap(self.stack, layer, self.gap_train, self.gap_heldout),
                             "layer": float(layer)})
        else:
            self.vae.advance()
        self.epoch += 1

    def pop_window(self) -> dict[str, float]:
        return {**self.window.pop(), **self.vae.pop_window()}

    def evaluate(self, scratch_dir: Path) -> tuple[dict[str, float], Path]:
        # imported here: evaluation pulls in sklearn and matplotlib, which training never needs
        from vae_attention.training.rbm.evaluate import evaluate

        return evaluate(self, Path(scratch_dir) / f"rbm_{self.epoch:04d}.png")

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "config": config_to_dict(self.config),
            "stack": self.stack.state_dict(),  # with every layer's PCD chains (a buffer)
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "data_rng": self.data_generator.get_state(),
            "sample_rng": self.sample_generator.get_state(),
            "window": self.window.state_dict(),
            "vae": self.vae.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_same_config(state.get("config"), self.config)
        self.stack.load_state_dict(state["stack"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self.data_generator.set_state(state["data_rng"].cpu())
        self.sample_generator.set_state(state["sample_rng"].cpu())
        self.window.load_state_dict(state["window"])
        self.vae.load_state_dict(state["vae"])
        self.epoch = int(state["epoch"])

    def weights(self) -> dict[str, torch.Tensor]:
        return {**{f"stack.{k}": v for k, v in self.stack.state_dict().items()},
                **{f"vae.{k}": v for k, v in self.vae.weights().items()}}

    def load(self, path: Path) -> None:
        # weights_only: a checkpoint is untrusted input; the state holds only tensors and plain containers.
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
