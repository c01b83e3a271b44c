"""One-class VAE training for anomaly localisation, as a trainee of the shared loop (unit = one epoch).

``AnomalyState`` owns the data sets, the model, Adam, and two generators seeded by ``config.seed``: a CPU one
for the loader's shuffling and MVTec's augmentation, and one on the compute device for z samples. Epoch
boundaries are the only checkpoint points, so saving both generators with the model and optimiser makes a
restored run continue bit-identically on CPU.

Protocol options (``AnomalyConfig``): with ``early_stopping_patience`` = P > 0, every epoch ends with the loss
(``config.loss``) on held-out inlier images (``build_holdout``), logged as ``holdout_loss``; after P epochs in a
row without a strictly lower one the trainee is ``finished`` (PyTorch Lightning 1.1's ``EarlyStopping(patience=P,
mode='min')`` on the report's ``val_loss``), and the shared loop makes that epoch the final one. With
``model_selection="test_auroc"`` every evaluation whose test AUROC beats all earlier ones keeps a copy of the
weights; ``weights()`` (the final ``vae.pt``) returns them, and each evaluation also reports that evaluation's
metrics as ``selected_*`` with ``selected_epoch`` (the report's ``ModelCheckpoint(monitor='auroc', mode='max')``,
MNIST: image AUROC). Both are in the checkpoint, so a resumed run agrees.
"""

from __future__ import annotations

import math
from collections.abc import Sized
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from vae_attention.attention import check_layer
from vae_attention.config import check_same_config, config_to_dict
from vae_attention.errors import DataError
from vae_attention.models import (
    MNISTConvVAE,
    ResNet18VAE,
    SeedResNet18VAE,
    SeedUCSDConvVAE,
    UCSDConvVAE,
    VAEOutput,
    reparameterize,
)
from vae_attention.training.anomaly.config import AnomalyConfig
from vae_attention.training.anomaly.objective import anomaly_loss
from vae_attention.training.loop import MetricWindow, default_device

# UCSD's held-out inliers: every UCSD_HOLDOUT_STRIDE-th training frame. The report's val split is 10% of the
# Train frames after a second random.shuffle (UCSD_Dataset.py), so ~90% of it was trained on as well.
UCSD_HOLDOUT_STRIDE = 10


def _limit(dataset: Dataset, limit: int) -> Dataset:
    """The first ``limit`` items (deterministic, for quick runs); the whole set when limit is 0."""
    if limit and limit < len(dataset):
        return Subset(dataset, range(limit))
    return dataset


def build_datasets(config: AnomalyConfig, generator: torch.Generator) -> tuple[Dataset, Dataset]:
    # imported here: the image loaders pull in torchvision and PIL, which building only a model never needs
    from vae_attention.data import MNIST_EVAL_DIGITS, MNISTOneClass, UCSDPed1

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
        train = _mvtec(config, "train", augment=config.augment, generator=generator if config.augment else None,
                       augment_policy=config.augment_policy)
        test = _mvtec(config, "test", include_good=config.eval_set == "all")
    return _limit(train, config.max_train_images), _limit(test, config.max_test_images)


def _mvtec(config: AnomalyConfig, split: str, **options) -> Dataset:
    from vae_attention.data import MVTecAD

    return MVTecAD(config.data_dir, config.category, split, image_size=config.resolved_image_size,
                   channels=config.in_channels, normalize=config.input_low < 0, **options)


def build_holdout(config: AnomalyConfig, train: Dataset) -> Dataset:
    """The inlier images early stopping watches: MNIST's test images of the digit, MVTec's ``test/good`` (both
    as the report's ``val_set``), UCSD every ``UCSD_HOLDOUT_STRIDE``-th frame of ``train`` (see above)."""
    from vae_attention.data import MNISTOneClass

    if config.dataset == "mnist":
        holdout = MNISTOneClass(config.data_dir, config.digit, "test", eval_digits=())
    elif config.dataset == "ucsd":
        holdout = Subset(train, range(0, len(train), UCSD_HOLDOUT_STRIDE))
    else:
        holdout = _mvtec(config, "test", good_only=True)
    return _limit(holdout, config.max_test_images)


def build_model(config: AnomalyConfig, generator: torch.Generator) -> torch.nn.Module:
    seed = config.architecture == "seed"
    if config.dataset == "mnist":  # the report's MNIST model is the authors' ConvVAE: the same under both
        return MNISTConvVAE(config.z_dim, generator=generator)
    if config.dataset == "ucsd":
        return (SeedUCSDConvVAE if seed else UCSDConvVAE)(config.z_dim, generator=generator)
    return (SeedResNet18VAE if seed else ResNet18VAE)(config.z_dim, config.resolved_image_size, generator=generator,
                                                      in_channels=config.in_channels)


def check_model(config: AnomalyConfig) -> None:
    """Build the model on CPU and run one blank input through it: a bad layer or size fails here, not later."""
    channels = config.in_channels
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
        self.holdout = build_holdout(config, self.train_set) if config.early_stopping_patience else None
        # early stopping: best holdout loss, epochs since it, the epoch training stopped at (None = running)
        self.early_stopping: dict[str, Any] = {"best": math.inf, "wait": 0, "stopped_epoch": None}
        # model selection: best test AUROC so far, its epoch, its metrics and (CPU) weights
        self.selection: dict[str, Any] = {"best": -math.inf, "epoch": None, "metrics": {}, "weights": None}

    # -- the shared loop's trainee interface ---------------------------------------------------------------
    @property
    def progress(self) -> int:
        return self.epoch

    @property
    def finished(self) -> bool:
        """True once early stopping has ended the run (the shared loop then stops)."""
        return self.early_stopping["stopped_epoch"] is not None

    def advance(self) -> None:
        """One epoch over the training set; per-batch losses go to the report window."""
        self.model.train()
        for batch in self.loader:
            x = batch["image"].to(self.device, non_blocking=True)
            out = self.model(x, generator=self.sample_generator)
            loss, values = anomaly_loss(self.config, out, x)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.window.add(values)
        self.epoch += 1
        if self.config.early_stopping_patience:
            self._early_stopping_check(self.holdout_loss())

    def holdout_loss(self) -> float:
        """Mean over held-out batches of the training loss, model in eval mode and z sampled (the report's
        VAE samples z in validation too) from a generator seeded by (seed, epoch), so that training draws and
        resumed runs are unaffected."""
        generator = torch.Generator(device=self.device).manual_seed(self.config.seed * 1_000_003 + self.epoch)
        self.model.eval()
        values = []
        try:
            with torch.no_grad():
                for batch in DataLoader(self.holdout, batch_size=self.config.batch_size, shuffle=False):
                    x = batch["image"].to(self.device)
                    mu, logvar = self.model.encode(x)
                    z = reparameterize(mu, logvar, generator)
                    values.append(anomaly_loss(self.config, VAEOutput(self.model.decode(z), mu, logvar, z), x)[1])
        finally:
            self.model.train()
        return sum(v["loss"] for v in values) / len(values)

    def _early_stopping_check(self, loss: float) -> None:
        state = self.early_stopping
        self.window.add({"holdout_loss": loss})
        if loss < state["best"]:  # strict, as Lightning's monitor_op (torch.lt) with min_delta 0
            state["best"], state["wait"] = loss, 0
        else:
            state["wait"] += 1
            if state["wait"] >= self.config.early_stopping_patience:
                state["stopped_epoch"] = self.epoch

    def select(self, metrics: dict[str, float]) -> None:
        """Model selection at an evaluation (``model_selection="test_auroc"``): keep the weights if this
        evaluation's test AUROC beats every earlier one (strictly), then add the kept evaluation's metrics to
        ``metrics`` as ``selected_*`` and its epoch as ``selected_epoch``."""
        if self.config.model_selection != "test_auroc":
            return
        chosen = self.selection
        value = metrics.get("image_auroc" if self.config.dataset == "mnist" else "pixel_auroc")
        if value is not None and value > chosen["best"]:
            chosen.update(best=float(value), epoch=self.epoch, metrics=dict(metrics),
                          weights={k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()})
        if chosen["epoch"] is not None:
            metrics.update({f"selected_{k}": v for k, v in chosen["metrics"].items()})
            metrics["selected_epoch"] = chosen["epoch"]

    def pop_window(self) -> dict[str, float]:
        return self.window.pop()

    def evaluate(self, scratch_dir: Path) -> tuple[dict[str, float], Path]:
        # imported here: evaluation pulls in sklearn and matplotlib, which building a state never needs
        from vae_attention.training.anomaly.evaluate import evaluate

        metrics, figure = evaluate(self, Path(scratch_dir) / f"anomaly_{self.epoch:04d}.png")
        self.select(metrics)
        if self.finished:
            metrics["stopped_early"] = 1.0  # the run ended before ``epochs`` on purpose (early stopping)
        return metrics, figure

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "config": config_to_dict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "data_rng": self.data_generator.get_state(),
            "sample_rng": self.sample_generator.get_state(),
            "window": self.window.state_dict(),
            "early_stopping": dict(self.early_stopping),
            "selection": dict(self.selection),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_same_config(state.get("config"), self.config)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.data_generator.set_state(state["data_rng"].cpu())
        self.sample_generator.set_state(state["sample_rng"].cpu())
        self.window.load_state_dict(state["window"])
        self.epoch = int(state["epoch"])
        # checkpoints written before these options existed lack the keys: start them afresh
        self.early_stopping.update(state.get("early_stopping", {}))
        self.selection.update(state.get("selection", {}))

    def weights(self) -> dict[str, torch.Tensor]:
        """The final weights: the selected evaluation's under ``model_selection="test_auroc"``, else the last."""
        if self.config.model_selection == "test_auroc" and self.selection["weights"] is not None:
            return self.selection["weights"]
        return self.model.state_dict()

    def load(self, path: Path) -> None:
        # weights_only: a checkpoint is untrusted input; the state holds only tensors and plain containers.
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
