"""The RBM study as data: the report's extension (stacked RBMs with Gumbel-relaxed attention on one-class MNIST)
under two protocols, measured against the anomaly study's MNIST VAE on the same pasted test images.

Protocols (``RBM_PROTOCOLS``; every one sets the same fields, as in ``search_spaces.protocols``):

- ``seed``: the reproducibility report's code, Carmoondedraak/FACT-2021 ``rbm_anomaly_maps/StackRBMs.py``:
  sizes 784-784-625-484-324-256-169-64-36, binary hidden units, CD-1, SGD lr 0.1, batch 64, 40 epochs per
  layer, images binarised by ``data.bernoulli()``, maps of layer 3 (``layer_idx=3``) by the relaxed one-hot
  construction (``rbm_map="seed"``) at TEMP = 0.1. One configuration.
- ``paper``: the paper's Grad-CAM recipe (Liu et al. 2020, Eq. 2: gradient-weighted activations, ReLU) carried
  over to RBMs as ``rbm_map="gradcam"`` (``vae_attention.rbm_attention``); the paper has no RBM, so the
  training settings are the report's (pick), τ = 0.5 and 8 relaxed samples (pick). Its grid varies the stack
  and the relaxation around that point: sizes {report's, 784-400-256-144-64}, k {1, 5}, lr {0.1, 0.01},
  τ {0.5, 0.1}, hidden {binary, spin}.

Both: digits {1, 3} (the anomaly study's MNIST digits, outliers {7, 4, 9, 2} and {8, 5}), seeds {1, 2, 3}, the
anomaly study's VAE (200 epochs) in every trial. ``rbm_map`` is a grid axis with one value per protocol: every
trial logs both constructions anyway (``<metric>/gradcam``, ``<metric>/seed``), and ``rbm_map`` only chooses
which one is also logged unsuffixed, so a second value would train identical stacks twice.

A trial dict is the flat config plus two keys that are not config fields: ``protocol`` (the label, ``paper`` or
``seed``, ``+custom`` when an explicit flag or ``--set`` changed a protocol field) and ``epochs``, the loop's
end (layers × epochs_per_layer + vae_epochs), which the progress table and the sweep summary read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from search_spaces.common import cartesian, check_grid_keys, config_hash, expand_grid, labels_of, science_part
from search_spaces.protocols import label
from vae_attention.config import config_to_dict
from vae_attention.errors import ConfigError
from vae_attention.models.rbm import REPORT_RBM_SIZES
from vae_attention.training.rbm import RBMConfig

KIND = "rbm"
SEEDS = (1, 2, 3)
DIGITS = (1, 3)
SMALL_SIZES = (784, 400, 256, 144, 64)  # square numbers, so layer 3 (64 units) is an 8 × 8 grid as well
TOTAL_KEY = "epochs"  # derived: not a config field
CADENCE = dict(report_every=1, checkpoint_every=10, eval_every=40)  # one evaluation per layer of 40 epochs

_REPORT_TRAINING = dict(sizes=REPORT_RBM_SIZES, rbm_layer=3, hidden="binary", k=1, persistent=False, lr=0.1,
                        batch_size=64, epochs_per_layer=40, sample_input=True)
RBM_PROTOCOLS: dict[str, dict[str, Any]] = {
    "paper": {
        **_REPORT_TRAINING,  # pick: the paper has no RBM; the report's training settings
        "rbm_map": "gradcam",  # Liu et al. Eq. 2 (Grad-CAM) for a fully connected layer: v ⊙ ∂s/∂v
        "map_activation": "relu",  # Liu et al. Eq. 2: ReLU of the weighted sum
        "temperature": 0.5,  # pick: binary Concrete at τ = 0.5 (Maddison et al. 2017 use 2/3 for binary)
        "n_samples": 8,  # pick: the score averages 8 relaxed samples
        "straight_through": False,  # pick
        "vae_attention": "paper",  # Liu et al. §3.1: mean of per-dimension ReLU maps (as the anomaly paper protocol)
    },
    "seed": {
        **_REPORT_TRAINING,  # FACT-2021 StackRBMs.py: layer_dimensions, lr, batch_size, epochs_per_layer, k=1
        "rbm_map": "seed",  # StackRBMs.attmaps: Σ RelaxedOneHotCategorical(σ(A)) sample, grid map, sigmoid
        "map_activation": "relu",  # not used by the seed construction (its map ends in a sigmoid)
        "temperature": 0.1,  # StackRBMs.py: TEMP = 0.1
        "n_samples": 1,  # StackRBMs.attmaps: one rsample
        "straight_through": False,  # StackRBMs.attmaps: rsample only
        "vae_attention": "authors",  # FACT-2021 expVAE_pl/exp_vae_pl.py: Σμ, |·| after upsampling (the VAE it shows)
    },
}
PROTOCOL_AXES: dict[str, dict[str, tuple]] = {
    "paper": {"digit": DIGITS, "sizes": (REPORT_RBM_SIZES, SMALL_SIZES), "k": (1, 5), "lr": (0.1, 0.01),
              "temperature": (0.5, 0.1), "hidden": ("binary", "spin"), "rbm_map": ("gradcam",)},
    "seed": {"digit": DIGITS, "rbm_map": ("seed",)},
}
# --quick: one point of the grid (the first value of every axis), one seed, a small stack, a few epochs, subsets.
QUICK = dict(sizes=(784, 100, 36), rbm_layer=1, epochs_per_layer=2, vae_epochs=2, report_every=1,
             checkpoint_every=2, eval_every=6, max_train_images=2000, max_test_images=400, heldout_images=200,
             num_bins=4096, figure_images=4)
QUICK_SEEDS = (1,)
CONFIG_KEYS = {f.name for f in dataclasses.fields(RBMConfig)}


def check_grid(grid: dict[str, tuple]) -> None:
    """One-line ConfigError for a ``--grid`` key that is not an ``RBMConfig`` field, or is ``seed`` or ``epochs``."""
    check_grid_keys(grid, CONFIG_KEYS, {"seed": "seeds are given with --seeds",
                                        TOTAL_KEY: "derived (layers × epochs_per_layer + vae_epochs); grid "
                                                   "epochs_per_layer or vae_epochs instead"})


def check_protocol(name: str) -> str:
    if name not in RBM_PROTOCOLS:
        raise ConfigError(f"the rbm study has protocols {', '.join(RBM_PROTOCOLS)}, not {name!r} (the authors' "
                          "code has no RBM)")
    return name


def trials(protocol: str = "paper", seeds: tuple[int, ...] | None = None, explicit: dict[str, Any] | None = None,
           axes: dict[str, tuple] | None = None, quick: bool = False) -> list[dict[str, Any]]:
    """The grid of ``protocol`` × seeds as typed trial dicts (with ``protocol`` and ``epochs``).

    Precedence: cadence < protocol bundle < the protocol's grid point < ``--quick`` < ``explicit`` (flags and
    ``--set``). ``axes`` replaces whole axes (``--digit``, ``--lr``, ``--grid``) and wins over the protocol and
    ``--quick`` for its keys; with ``quick`` every axis of the protocol keeps its first value, the given axes all
    of theirs.
    """
    bundle = RBM_PROTOCOLS[check_protocol(protocol)]
    explicit = dict(explicit or {})
    if TOTAL_KEY in explicit:
        raise ConfigError(f"{TOTAL_KEY} is derived (layers × epochs_per_layer + vae_epochs); set epochs_per_layer "
                          "and vae_epochs instead")
    own = PROTOCOL_AXES[protocol]
    grid = {**({name: values[:1] for name, values in own.items()} if quick else own), **(axes or {})}
    layered = {k: v for k, v in {**(QUICK if quick else {}), **explicit}.items() if k not in (axes or {})}
    points = ({**CADENCE, **bundle, **point, **layered} for point in cartesian(grid))
    chosen = tuple(seeds or (QUICK_SEEDS if quick else SEEDS))
    result = []
    for trial in expand_grid(points, chosen):
        typed = typed_trial(trial)
        typed_explicit = {k: v for k, v in typed.items() if k in explicit}
        typed[TOTAL_KEY] = trial_config(typed).total_epochs
        typed["protocol"] = label(protocol, bundle, typed_explicit)
        result.append(typed)
    return result


def trial_config(trial: dict[str, Any]) -> RBMConfig:
    """The typed config of a flat trial dict (its ``protocol`` label and derived ``epochs`` left out)."""
    return RBMConfig.from_dict({k: v for k, v in science_part(trial).items() if k != TOTAL_KEY})


def resolved_params(trial: dict[str, Any]) -> dict[str, Any]:
    """Every config field as the trial ran it (``rbm_layer`` as a non-negative index), ``epochs``, the label."""
    config = trial_config(trial)
    resolved = config_to_dict(config)
    resolved.update(rbm_layer=config.map_layer, **{TOTAL_KEY: config.total_epochs}, **labels_of(trial))
    return resolved


def typed_trial(trial: dict[str, Any]) -> dict[str, Any]:
    """The trial's own keys with values coerced to their fields' types (raises ConfigError for bad ones)."""
    resolved = config_to_dict(trial_config(trial))
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in resolved.items() if k in trial}


def config_key(trial: dict[str, Any]) -> str:
    return config_hash(resolved_params(trial))
