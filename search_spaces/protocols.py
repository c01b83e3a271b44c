"""Protocols: named bundles of config values that reproduce one source's way of running a study.

``PROTOCOLS[study][name]`` is ``{config field: value}`` for the disentanglement study and
``{dataset: {config field: value}}`` for the anomaly study (the report's code evaluated MVTec-AD and UCSD
differently); the RBM study's are ``search_spaces.rbm.RBM_PROTOCOLS`` (``bundle("rbm", name)``). The sources:

- ``paper``: Liu et al., "Towards Visually Explaining Variational Autoencoders", CVPR 2020, as written; where it
  is silent, Kim & Mnih, "Disentangling by Factorising", ICML 2018 (the FactorVAE it builds on), else our pick.
- ``authors``: the authors' released code, github.com/liuem607/expVAE (``code/``: one-class MNIST only; it has no
  disentanglement code, so that bundle is the paper's with their attention conventions).
- ``seed``: the reproducibility report's code, github.com/Carmoondedraak/FACT-2021 (``disentanglement/`` copies
  github.com/1Konny/FactorVAE; ``expVAE_pl/``), at the commits that produced its stored results.

Every protocol of a study sets the same fields (``protocol_fields``), so any explicit change of one of them is
an override: such a run is labelled ``<name>+custom`` and never set beside a published number.
Precedence (``layer_values``): study defaults < protocol < ``--quick`` (loop and size keys) < explicit flags and
``--set``. Where a source is silent or ambiguous the comment says "pick".
"""

from __future__ import annotations

from typing import Any

from vae_attention.errors import ConfigError

PROTOCOL_NAMES = ("paper", "authors", "seed")
DEFAULT_PROTOCOL = "paper"
CUSTOM_SUFFIX = "+custom"
PROTOCOL_KEY = "protocol"  # the trial dict's key and the MLflow param; not a field of the science configs

_DISENTANGLE: dict[str, dict[str, Any]] = {
    "paper": {
        "architecture": "kim_mnih",  # Liu et al. §4.2 train FactorVAE; Kim & Mnih App. Table 1 (conv ×4, FC 128)
        "encoder_fc_relu": False,  # Kim & Mnih App. Table 1 lists the encoder's FC 128 without an activation
        "d_hidden_layers": 6,  # Kim & Mnih App. Table 1: discriminator 6 × FC 1000, LeakyReLU 0.2
        "loop_order": "sequential",  # Kim & Mnih Algorithm 1: VAE update, then discriminator update
        "ad_gradient": "differentiable",  # Liu et al. §3.3: L_AD is a term of the training loss
        "ad_score": "per_dim",  # Liu et al. §3.3, Eq. 5: attention maps of individual latent dimensions
        "ad_activation": "relu",  # Liu et al. Eq. 2 (Grad-CAM's ReLU)
        "normalize_grads": "none",  # Liu et al. §3: α = spatial mean of the raw gradient
        "pairs": "all_pairs",  # pick: Eq. 5 names two maps but no selection rule; all n(n−1)/2 pairs, no order
        "attention_layer": "encoder.0",  # pick: the paper names no layer for dSprites; first conv (32×32)
    },
    "authors": {
        "architecture": "kim_mnih",  # pick: expVAE has no disentanglement code (report §3.3); the paper's model
        "encoder_fc_relu": False,  # pick: as the paper (Kim & Mnih App. Table 1)
        "d_hidden_layers": 6,  # pick: as the paper (Kim & Mnih App. Table 1)
        "loop_order": "sequential",  # pick: as the paper (Kim & Mnih Algorithm 1)
        "ad_gradient": "differentiable",  # pick: as the paper (§3.3)
        "ad_score": "per_dim",  # pick: Eq. 5 needs one map per dimension (gradcam.py backprops Σμ, one map)
        "ad_activation": "abs",  # expVAE code/gradcam.py GradCAM.generate: torch.abs of the map
        "normalize_grads": "batch",  # expVAE code/gradcam.py GradCAM.normalize: ÷ RMS over the whole batch
        "pairs": "all_pairs",  # pick: as the paper
        "attention_layer": "encoder.0",  # pick: as the paper
    },
    "seed": {
        "architecture": "konny",  # FACT-2021 disentanglement/model.py FactorVAE1 = 1Konny/FactorVAE model.py
        "encoder_fc_relu": True,  # 1Konny model.py FactorVAE1: Conv(64, 128, 4) + ReLU plays the FC 128
        "d_hidden_layers": 5,  # FACT-2021 disentanglement/model.py Discriminator: 5 × Linear 1000 + LeakyReLU
        "loop_order": "deferred",  # FACT-2021 ad_factorvae.py/vanilla.py train(): optim_*.step() at the top of
        # the next iteration; D_tc_loss uses the un-detached D_z, so its backward reaches the encoder
        "ad_gradient": "detached",  # FACT-2021 ad_factorvae.py train(): gcam.generate() + L_AD under no_grad
        "ad_score": "sum",  # FACT-2021 disentanglement/ops.py GradCamDissen.backward: score = sum(mu)
        "ad_activation": "abs",  # FACT-2021 ops.py GradCamDissen.generate: torch.abs after upsampling
        "normalize_grads": "batch",  # FACT-2021 ops.py GradCamDissen.normalize: ÷ RMS over the whole batch
        "pairs": "consecutive_images",  # FACT-2021 ad_factorvae.py select_attention_maps: (map i, map i+1)
        # FACT-2021 ad_factorvae.py at 67117d6 (the code of results/disent): target_layer='encode.10', the last
        # encoder conv (1×1 map); HEAD (bc6ab65, after the results) says 'encode.1'; report §4.2: "the last
        # convolutional layer of the encoder"
        "attention_layer": "encoder.10",
    },
}

_ANOMALY_COMMON: dict[str, dict[str, Any]] = {
    "paper": {
        "attention": "paper",  # Liu et al. §3.1: mean over latent dimensions of per-dimension (ReLU) maps
        "normalize_grads": "none",  # Liu et al. §3.1: α = spatial mean of the raw gradient
        "loss": "elbo",  # Liu et al. §3: a one-class VAE trained on its ELBO
        "architecture": "default",  # Liu et al. §4.1: ResNet-18 VAE on MVTec-AD; pick for MNIST/UCSD (silent)
        "input_range": "unit",  # pick: the paper is silent on input scaling
        "augment_policy": "small",  # pick: the paper is silent on augmentation
        "early_stopping_patience": 0,  # pick: the paper is silent; a fixed number of epochs
        "eval_set": "all",  # pick: the paper says "test set" without excluding good images
        "model_selection": "last",  # pick: the paper is silent; never select on the test set
    },
    "authors": {
        "attention": "authors",  # expVAE code/gradcam.py: |·| of the bilinearly upsampled map of Σμ
        "normalize_grads": "batch",  # expVAE code/gradcam.py GradCAM.normalize: ÷ RMS over the whole batch
        "loss": "elbo",  # expVAE code/train_expVAE.py loss_function: BCE (sum) + full analytic KL
        "architecture": "default",  # expVAE code/model.py ConvVAE (MNIST); pick for UCSD/MVTec (no code)
        "input_range": "unit",  # expVAE code/train_expVAE.py: transforms.ToTensor() only
        "augment_policy": "small",  # pick: expVAE has no MVTec-AD code
        "early_stopping_patience": 0,  # expVAE code/train_expVAE.py: a fixed number of epochs
        "eval_set": "all",  # expVAE code/test_expVAE.py: every test image of the outlier digit
        "model_selection": "last",  # pick: train_expVAE.py keeps model_best by inlier test loss (no such option)
    },
    "seed": {
        "attention": "authors",  # FACT-2021 expVAE_pl/exp_vae_pl.py forward: Σμ, |·| after bilinear upsampling
        "normalize_grads": "batch",  # FACT-2021 exp_vae_pl.py forward: dz_da ÷ RMS over the whole batch
        "loss": "seed",  # FACT-2021 exp_vae_pl.py loss_f: BCE-sum or MSE-mean (256²) + 0.1 × (log q − log p)
        "architecture": "seed",  # FACT-2021 expVAE_pl/vae_model.py VAE (pl_bolts resnet18 for MVTec-AD)
        "input_range": "seed",  # FACT-2021 expVAE_pl/MVTEC_Dataset.py: Normalize(0.5, 0.5), grey classes [0, 1]
        "augment_policy": "seed",  # FACT-2021 MVTEC_Dataset.py: RandomHorizontalFlip(0.5), RandomRotation(90)
        "early_stopping_patience": 50,  # FACT-2021 exp_vae_pl.py: EarlyStopping('val_loss', patience=50)
        "eval_set": "all",  # FACT-2021 MNIST_Dataset.py/UCSD_Dataset.py (UCSD: clips with masks = gt_only)
        "model_selection": "last",  # FACT-2021 exp_vae_pl.py: MNIST's ModelCheckpoint monitors val_loss
    },
}
# What the report's code did differently per data set (on top of the common seed bundle above).
_ANOMALY_SEED_PER_DATASET: dict[str, dict[str, Any]] = {
    "mnist": {},
    "ucsd": {
        "model_selection": "test_auroc",  # FACT-2021 exp_vae_pl.py: ModelCheckpoint(monitor='auroc', 'max')
    },
    "mvtec": {
        "eval_set": "defective",  # FACT-2021 MVTEC_Dataset.py MVTEC: condition=None keeps 'good'-less folders
        "model_selection": "test_auroc",  # FACT-2021 exp_vae_pl.py: ModelCheckpoint(monitor='auroc', 'max')
    },
}
ANOMALY_DATASETS = ("mnist", "ucsd", "mvtec")

PROTOCOLS: dict[str, dict[str, dict[str, Any]]] = {
    "disentangle": _DISENTANGLE,
    "anomaly": {
        name: {dataset: {**common, **(_ANOMALY_SEED_PER_DATASET[dataset] if name == "seed" else {})}
               for dataset in ANOMALY_DATASETS}
        for name, common in _ANOMALY_COMMON.items()
    },
}


def check_protocol(name: str) -> str:
    if name not in PROTOCOL_NAMES:
        raise ConfigError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOL_NAMES)}")
    return name


def bundle(study: str, name: str, dataset: str | None = None) -> dict[str, Any]:
    """The config values of protocol ``name`` for ``study`` (anomaly: for ``dataset``), a copy.

    The RBM study's protocols (``paper``, ``seed``; the authors' code has no RBM) live beside its grid in
    ``search_spaces.rbm.RBM_PROTOCOLS``, which imports this module; ``bundle("rbm", name)`` reads them from there.
    """
    if study == "rbm":
        from search_spaces import rbm  # here: search_spaces.rbm imports this module

        return dict(rbm.RBM_PROTOCOLS[rbm.check_protocol(name)])
    check_protocol(name)
    values = PROTOCOLS[study][name]
    if study == "anomaly":
        if dataset not in values:
            raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(ANOMALY_DATASETS)}")
        values = values[dataset]
    return dict(values)


def protocol_fields(study: str) -> tuple[str, ...]:
    """The config fields a protocol of ``study`` sets (the same for every protocol and data set)."""
    if study == "rbm":
        return tuple(bundle("rbm", DEFAULT_PROTOCOL))
    if study == "anomaly":
        return tuple(PROTOCOLS[study][DEFAULT_PROTOCOL][ANOMALY_DATASETS[0]])
    return tuple(PROTOCOLS[study][DEFAULT_PROTOCOL])


def layer_values(protocol: dict[str, Any], quick: dict[str, Any], explicit: dict[str, Any]) -> dict[str, Any]:
    """The overrides a study's grid points get: protocol < ``--quick`` (loop and size keys) < explicit.

    The study's own defaults (its grid and loop) sit below all three: the caller applies the result on top.
    """
    return {**{k: v for k, v in protocol.items() if k not in quick}, **quick, **explicit}


def base_name(label: str) -> str:
    """``seed+custom`` → ``seed``."""
    return label.removesuffix(CUSTOM_SUFFIX)


def label(name: str, protocol: dict[str, Any], typed_trial: dict[str, Any]) -> str:
    """``name``, or ``name+custom`` when a (typed) trial's value of a protocol field differs from the bundle."""
    return name + CUSTOM_SUFFIX if overridden_fields(protocol, typed_trial) else name


def overridden_fields(protocol: dict[str, Any], typed_trial: dict[str, Any]) -> list[str]:
    """The protocol fields whose value in the (typed) trial is not the protocol's."""
    return sorted(k for k, v in protocol.items() if k in typed_trial and not _same(typed_trial[k], v))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def describe(study: str, label_: str, dataset: str | None = None) -> list[str]:
    """Dry-run lines: the protocol's name and each of its values (``key = value``)."""
    values = bundle(study, base_name(label_), dataset)
    width = max(map(len, values))
    where = f" ({dataset})" if dataset else ""
    return [f"protocol {label_}{where}:"] + [f"  {k.ljust(width)} = {v}" for k, v in values.items()]
