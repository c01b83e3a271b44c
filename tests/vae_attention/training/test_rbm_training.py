"""The RBM study's trainee on real handwriting (scikit-learn's digits in the official MNIST IDX layout).

Oracles: a run restored mid-stack against the same run straight through (every tensor equal); the chains' own
effect (a restore that drops them diverges); the mean-image predictor's squared error for reconstruction (a
model that learned nothing beyond pixel means cannot beat it); scikit-learn's ``roc_auc_score`` for the pixel
AUROC of the input-image map.
"""

from __future__ import annotations

import pytest
import torch
from helpers.datasets import write_sklearn_digits_mnist
from sklearn.metrics import roc_auc_score

from search_spaces.rbm import trial_config, trials
from vae_attention.errors import ConfigError
from vae_attention.training.loop import checkpoint_writer, load_checkpoint, run_loop
from vae_attention.training.rbm import RBMConfig, RBMState, build_data
from vae_attention.training.rbm.evaluate import MAP_KINDS, pixel_metrics


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread (two were many times slower on a loaded 2-CPU machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sklearn_mnist")
    write_sklearn_digits_mnist(root)
    return root


def small(root, **changes) -> RBMConfig:
    values = dict(data_dir=str(root), sizes=(784, 49, 16), rbm_layer=-1, epochs_per_layer=2, vae_epochs=1,
                  batch_size=32, vae_batch_size=64, heldout_images=40, eval_every=5, checkpoint_every=1,
                  num_bins=1024, figure_images=2, max_test_images=60)
    return RBMConfig(**{**values, **changes})


def tensors(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested state dict, by path."""
    found = {}
    items = state.items() if isinstance(state, dict) else enumerate(state)
    for key, value in items:
        path = f"{prefix}/{key}"
        if isinstance(value, torch.Tensor):
            found[path] = value
        elif isinstance(value, (dict, list, tuple)):
            found.update(tensors(value, path))
    return found


def test_resume_mid_stack_is_bit_identical_with_pcd_chains(digits_root, tmp_path):
    config = small(digits_root, persistent=True, k=2)
    data = build_data(config)
    straight = RBMState(config, device="cpu", data=data)
    for _ in range(config.total_epochs):
        straight.advance()

    first = RBMState(config, device="cpu", data=data)
    for _ in range(3):  # layer 1 after one of its two epochs: mid-stack, mid-layer
        first.advance()
    chains = first.stack.layers[1].persistent_chains
    assert chains.shape == (config.batch_size, 49) and set(chains.unique().tolist()) <= {0.0, 1.0}
    checkpoint_writer(first, {}, None, final=False)(tmp_path)  # the loop's own checkpoint files

    resumed = RBMState(config, device="cpu", data=data)
    load_checkpoint(resumed, tmp_path)
    assert resumed.epoch == 3 and resumed.layer == 1
    assert torch.equal(resumed.stack.layers[1].persistent_chains, chains)
    while resumed.epoch < config.total_epochs:
        resumed.advance()
    want, got = tensors(straight.state_dict()), tensors(resumed.state_dict())
    assert want.keys() == got.keys()
    assert "/stack/layers.1.persistent_chains" in want and "/vae/model/encoder.0.weight" in want
    different = [k for k in want if not torch.equal(want[k], got[k])]
    assert not different, different

    # the chains matter: the same restore without them continues differently
    def one_more_epoch(drop_chains: bool) -> torch.Tensor:
        state = RBMState(config, device="cpu", data=data)
        load_checkpoint(state, tmp_path)
        if drop_chains:
            state.stack.layers[1].reset_chains()
        state.advance()
        return state.stack.layers[1].W

    assert torch.equal(one_more_epoch(False), one_more_epoch(False))
    assert not torch.equal(one_more_epoch(False), one_more_epoch(True))


def test_cd_lowers_reconstruction_error_in_the_loop_and_evaluates_every_map(digits_root, tmp_path):
    config = small(digits_root, sizes=(784, 64), rbm_layer=0, epochs_per_layer=6, vae_epochs=0, batch_size=16,
                   eval_every=6)
    state = RBMState(config, device="cpu")
    reports = []
    run_loop(state, config.schedule, lambda metrics, write: reports.append(metrics), tmp_path)
    errors = [r["recon_error"] for r in reports]
    assert [r["epoch"] for r in reports] == list(range(1, 7)) and all(r["layer"] == 0 for r in reports)
    assert errors[-1] < 0.6 * errors[0]
    train = torch.stack([state.data.train[i]["image"].flatten() for i in range(len(state.data.train))])
    mean_image_mse = float((train - train.mean(0)).pow(2).mean())
    assert state.stack.layers[0].reconstruction_error(train) < mean_image_mse
    assert all("free_energy_gap" in r and "cd_loss" in r for r in reports)

    final = reports[-1]
    for kind in MAP_KINDS:
        for metric in ("pixel_auroc", "best_iou", "best_iou_seed", "best_iou_per_batch", "image_auroc"):
            assert 0.0 <= final[f"{metric}/{kind}"] <= 1.0, (metric, kind)
    assert final["pixel_auroc"] == final["pixel_auroc/gradcam"]  # the configured rbm_map, unsuffixed
    assert (tmp_path / "rbm_0006.png").stat().st_size > 0  # the report callback here writes no checkpoint


def test_input_map_pixel_auroc_equals_sklearn(digits_root):
    data = build_data(small(digits_root))
    images = torch.stack([data.pasted[i]["image"][0] for i in range(len(data.pasted))])
    masks = torch.stack([data.pasted[i]["mask"][0] for i in range(len(data.pasted))]).to(torch.uint8)
    batches = list(images.split(16)), list(masks.split(16))
    ours = pixel_metrics(*batches, num_bins=65_536)["pixel_auroc"]
    assert ours == pytest.approx(roc_auc_score(masks.flatten().numpy(), images.flatten().numpy()), abs=1e-9)


def test_config_and_protocol_errors_are_one_line():
    with pytest.raises(ConfigError, match="unknown RBMConfig key"):
        RBMConfig.from_dict({"sizez": "784,36"})
    with pytest.raises(ConfigError, match="not a square number"):
        RBMConfig(sizes=(784, 30), rbm_layer=0)
    with pytest.raises(ConfigError, match="outside the 2 layers"):
        RBMConfig(sizes=(784, 36, 16), rbm_layer=2)
    with pytest.raises(ConfigError, match="no RBM"):
        trials("authors")
    seed = trials("seed", quick=False)
    assert {t["rbm_map"] for t in seed} == {"seed"} and {t["protocol"] for t in seed} == {"seed"}
    assert trial_config(seed[0]).sizes == (784, 784, 625, 484, 324, 256, 169, 64, 36)
    assert trials("seed", quick=True, explicit={"temperature": "0.3"})[0]["protocol"] == "seed+custom"
