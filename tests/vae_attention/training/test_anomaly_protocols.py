"""The anomaly study's protocol settings (issue 10): score / upsample_first, the report's loss, architectures,
input range, augmentation, early stopping, evaluation set, test-AUROC model selection and ``best_iou_seed``.

Oracles: closed forms in numpy (the normal-difference score's gradient, the seed loss), torchvision's own
ResNet-18 (the seed encoder), scikit-learn's macro Jaccard (the report's IoU), hand-built loss / AUROC
sequences (early stopping, model selection).
"""

import functools
import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from vae_attention import ConfigError
from vae_attention.anomaly_scores import normal_difference_score
from vae_attention.attention import attention_maps
from vae_attention.models import VAE, SeedResNet18VAE, VAEOutput
from vae_attention.training import AnomalyConfig, AnomalyState
from vae_attention.training.anomaly import evaluate as evaluate_module
from vae_attention.training.anomaly.objective import anomaly_loss
from vae_attention.training.anomaly.state import build_datasets, check_model
from vae_attention.training.loop import WEIGHTS_FILE, Schedule, run_loop


def _mvtec(root, **changes):
    base = dict(dataset="mvtec", category="bottle", data_dir=str(root), image_size=32, epochs=2, batch_size=2,
                checkpoint_every=1, eval_every=1, num_bins=256, figure_images=1, z_dim=4, seed=1)
    return AnomalyConfig(**{**base, **changes})


def _mnist(root, **changes):
    base = dict(dataset="mnist", digit=1, data_dir=str(root), epochs=6, batch_size=64, checkpoint_every=1,
                eval_every=1, figure_images=1, eval_digits=(7, 4), z_dim=4, max_train_images=8, seed=2)
    return AnomalyConfig(**{**base, **changes})


# ---- config: "auto" keeps today's behaviour; bad combinations fail early ------------------------------------

def test_auto_score_and_upsampling_follow_the_attention_mode_and_explicit_values_win():
    defaults = AnomalyConfig(digit=1)
    assert (defaults.resolved_score, defaults.resolved_upsample_first) == ("sum", True)
    paper = AnomalyConfig(digit=1, attention="paper")
    assert (paper.resolved_score, paper.resolved_upsample_first, paper.resolved_activation) == (
        "mean_per_dim", False, "relu")
    mixed = AnomalyConfig(digit=1, attention="paper", score="normal_diff", upsample_first="yes")
    assert (mixed.resolved_score, mixed.resolved_upsample_first) == ("normal_diff", True)
    assert (defaults.loss, defaults.architecture, defaults.input_range, defaults.augment_policy,
            defaults.early_stopping_patience, defaults.eval_set, defaults.model_selection) == (
        "elbo", "default", "unit", "small", 0, "all", "last")


@pytest.mark.parametrize("changes, message", [
    (dict(dataset="mvtec", category="bottle", input_range="seed"), "Bernoulli likelihood"),
    (dict(dataset="ucsd", eval_set="defective"), "MVTec-AD only"),
    (dict(early_stopping_patience=-1), "early_stopping_patience"),
    (dict(score="max"), "score='max' is not one of"),
])
def test_config_rejects_settings_that_cannot_work(changes, message):
    with pytest.raises(ConfigError, match=message):
        AnomalyConfig(**{"digit": 1, **changes})


# ---- the normal-difference score's maps = Grad-CAM of the closed-form score ---------------------------------

class LinearHeadVAE(VAE):
    """encoder.0 = Conv(1→2, 3×3, same) on 4×4 images; μ and log σ² are linear in its output, so ∂s/∂A is
    W_μᵀ ∂s/∂μ + W_lvᵀ ∂s/∂logvar in closed form."""

    def __init__(self, generator):
        super().__init__()
        self.z_dim = 3
        self.encoder = nn.Sequential(nn.Conv2d(1, 2, 3, 1, 1), nn.Flatten(), nn.Linear(2 * 4 * 4, 2 * self.z_dim))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))
        self.decoder = nn.Identity()


def test_normal_diff_maps_equal_the_gradient_of_the_closed_form_score():
    g = torch.Generator().manual_seed(0)
    model = LinearHeadVAE(g).double()
    x = torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64)
    inliers = torch.rand(5, 1, 4, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        mu_in = model.encode(inliers)[0].numpy()
    m, v = mu_in.mean(0), mu_in.var(0)  # numpy: population variance, the inlier summary of Eq. 3
    score = functools.partial(normal_difference_score, inlier_mean=torch.from_numpy(m), inlier_var=torch.from_numpy(v))
    ours = attention_maps(model, x, "encoder.0", score_fn=score, activation="abs", upsample_first=True)

    conv, head = model.encoder[0], model.encoder[2]
    with torch.no_grad():
        a = conv(x).numpy()  # (B, K=2, 4, 4)
        stats = head(torch.from_numpy(a.reshape(2, -1))).numpy()
    w = head.weight.detach().numpy()  # (6, 32)
    mu, logvar = stats[:, :3], stats[:, 3:]
    var = np.exp(logvar)
    t = v + var  # Eq. 3: U_i ~ N(m_i − μ_i, v_i + σ_i²), density at u = 0 (Eq. 4)
    d = mu - m
    p = np.exp(-d**2 / (2 * t)) / np.sqrt(2 * np.pi * t)
    ds_dmu = -p * d / t
    ds_dlogvar = p * (d**2 / (2 * t**2) - 1 / (2 * t)) * var
    grad_a = (ds_dmu @ w[:3] + ds_dlogvar @ w[3:]).reshape(2, 2, 4, 4)
    alpha = grad_a.mean(axis=(2, 3), keepdims=True)
    expected = np.abs((alpha * a).sum(axis=1))
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-10, atol=1e-14)
    assert float(ours.abs().max()) > 0
    with pytest.raises(ConfigError, match="one score per image"):
        attention_maps(model, x, "encoder.0", score_fn=lambda mu, logvar: mu.sum())


# ---- the report's loss ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", ["mnist", "mvtec"])
def test_seed_loss_equals_its_closed_form(dataset):
    g = torch.Generator().manual_seed(4)
    extra = dict(category="bottle", input_range="seed") if dataset == "mvtec" else dict(digit=1)
    config = AnomalyConfig(dataset=dataset, loss="seed", **extra)
    channels, side = (3, 4) if dataset == "mvtec" else (1, 3)
    x = torch.rand(2, channels, side, side, generator=g, dtype=torch.float64)
    x = 2 * x - 1 if dataset == "mvtec" else x
    out_img = torch.randn(2, channels, side, side, generator=g, dtype=torch.float64)
    mu = torch.randn(2, 5, generator=g, dtype=torch.float64)
    logvar = torch.randn(2, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    z = mu + torch.exp(logvar / 2) * eps  # the one sample the decoder saw
    loss, values = anomaly_loss(config, VAEOutput(out_img, mu, logvar, z), x)

    xn, on, mun, lvn, zn = (t.numpy() for t in (x, out_img, mu, logvar, z))
    if dataset == "mvtec":  # MSE averaged over every element, the decoder output is the reconstruction
        recon = np.mean((on - xn) ** 2)
    else:  # BCE summed over every pixel of the batch, on sigmoid(output)
        prob = 1 / (1 + np.exp(-on))
        recon = -np.sum(xn * np.log(prob) + (1 - xn) * np.log(1 - prob))
    log_q = -((zn - mun) ** 2) / (2 * np.exp(lvn)) - lvn / 2 - np.log(2 * np.pi) / 2
    log_p = -(zn**2) / 2 - np.log(2 * np.pi) / 2
    kl = np.mean(log_q - log_p)  # averaged over batch and latent dims
    assert float(loss) == pytest.approx(recon + 0.1 * kl, rel=1e-12)
    assert values["recon_loss"] == pytest.approx(recon, rel=1e-12) and values["kld"] == pytest.approx(kl, rel=1e-12)


# ---- the report's MVTec model -----------------------------------------------------------------------------------

def _decoder_block_params(c_in, c_out, shortcut):
    """pl_bolts' DecoderBlock: conv3x3(c_in, c_in) + BN, resize-conv3x3(c_in, c_out) + BN, [1×1 + BN]."""
    return 9 * c_in * c_in + 2 * c_in + 9 * c_in * c_out + 2 * c_out + (c_in * c_out + 2 * c_out if shortcut else 0)


def test_seed_mvtec_model_is_torchvision_resnet18_with_a_pl_bolts_decoder():
    z = 8
    model = SeedResNet18VAE(z_dim=z, image_size=32, generator=torch.Generator().manual_seed(0))
    tv = torchvision.models.resnet18(weights=None)
    missing, unexpected = model.encoder.load_state_dict(
        {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}, strict=False)
    assert missing == ["fc.weight", "fc.bias"] and unexpected == []
    tv.fc = nn.Identity()  # torchvision's pooled 512 features
    model.eval()
    tv.eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.encoder[:-1](x), tv(x))
        assert model.encoder.fc.in_features == 512
        out = model(x)
    assert out.recon_logits.shape == (2, 3, 32, 32) and out.mu.shape == out.logvar.shape == (2, z)
    shapes = {}
    for name in ("upscale1", "layer1", "layer2", "layer3", "layer4"):
        getattr(model.decoder, name).register_forward_hook(lambda m, i, o, name=name: shapes.update({name: o.shape}))
    with torch.no_grad():
        model.decode(out.mu)
    assert shapes == {"upscale1": (2, 512, 1, 1), "layer1": (2, 256, 2, 2), "layer2": (2, 128, 4, 4),
                      "layer3": (2, 64, 8, 8), "layer4": (2, 64, 16, 16)}
    blocks = [(512, 256, True), (256, 256, False), (256, 128, True), (128, 128, False), (128, 64, True),
              (64, 64, False), (64, 64, True), (64, 64, False)]
    expected = (z * 8192 + 8192) + sum(_decoder_block_params(*b) for b in blocks) + 64 * 3 * 9
    assert sum(p.numel() for p in model.decoder.parameters()) == expected
    gray = SeedResNet18VAE(z_dim=z, image_size=32, in_channels=1).eval()
    assert gray.encoder.conv1.weight.shape == (64, 1, 7, 7)
    assert gray(torch.rand(1, 1, 32, 32)).recon_logits.shape == (1, 1, 32, 32)


# ---- the report's input range and augmentation ------------------------------------------------------------------

def test_seed_input_range_per_category(mvtec_root):
    root = mvtec_root[0]
    for category, channels, low in (("grid", 1, 0.0), ("bottle", 3, -1.0)):
        config = _mvtec(root, category=category, input_range="seed", loss="seed", augment=False)
        assert (config.in_channels, config.input_low) == (channels, low)
        check_model(config)  # the model takes that many channels
        train, _ = build_datasets(config, torch.Generator())
        unit, _ = build_datasets(_mvtec(root, category=category, augment=False), torch.Generator())
        image = train[0]["image"]
        assert image.shape == (channels, 32, 32)
        assert float(image.min()) >= low and float(image.max()) <= 1.0
        if category == "bottle":
            torch.testing.assert_close(image, (unit[0]["image"] - 0.5) / 0.5)
            assert float(image.min()) < 0
        else:  # one grayscale channel in [0, 1], the same pixels as the 3 identical channels of "unit"
            torch.testing.assert_close(image[0], unit[0]["image"][0], atol=1 / 255, rtol=0)


def test_seed_augmentation_draws_a_horizontal_flip_and_a_rotation_up_to_90_degrees(mvtec_root):
    from vae_attention.data import MVTecAD

    ds = MVTecAD(mvtec_root[0], "bottle", "train", image_size=32, augment=True, augment_policy="seed",
                 generator=torch.Generator().manual_seed(0))
    draws = [ds.draw_augmentation() for _ in range(400)]
    angles = np.array([a for _, _, a in draws])
    assert not any(v for _, v, _ in draws)  # never a vertical flip
    assert 0.4 < np.mean([h for h, _, _ in draws]) < 0.6
    assert np.abs(angles).max() <= 90 and np.abs(angles).max() > 80 and (angles < -45).any()


# ---- a few steps of each new setting ----------------------------------------------------------------------------

@pytest.mark.parametrize("dataset, changes", [
    ("mvtec", dict(architecture="seed", loss="seed", input_range="seed", augment_policy="seed", eval_set="defective",
                   early_stopping_patience=5, model_selection="test_auroc", normalize_grads="batch")),
    ("mvtec", dict(category="grid", architecture="seed", loss="seed", input_range="seed", attention="paper",
                   score="normal_diff", upsample_first="yes")),
    ("ucsd", dict(architecture="seed", loss="seed", early_stopping_patience=3)),
    ("mnist", dict(loss="seed", score="normal_diff", model_selection="test_auroc", early_stopping_patience=2)),
])
def test_each_setting_trains_evaluates_and_logs_the_seed_iou(dataset, changes, mvtec_root, ucsd_root, mnist_root,
                                                              tmp_path):
    if dataset == "mvtec":
        config = _mvtec(mvtec_root[0], **changes)
    elif dataset == "ucsd":
        config = AnomalyConfig(dataset="ucsd", data_dir=str(ucsd_root[0]), epochs=2, batch_size=4, z_dim=4,
                               checkpoint_every=1, eval_every=1, figure_images=1, num_bins=256, **changes)
    else:
        config = _mnist(mnist_root, **changes)
    state = AnomalyState(config, device="cpu")
    state.advance()
    window = state.pop_window()
    assert all(math.isfinite(v) for v in window.values()), window
    assert ("holdout_loss" in window) == bool(config.early_stopping_patience)
    metrics, figure = state.evaluate(tmp_path)
    assert figure.is_file()
    if dataset != "mnist":
        assert 0.0 <= metrics["best_iou_seed"] <= 1.0 and "best_threshold_seed" in metrics
    if config.eval_set == "defective":
        assert (state.test_set.labels == 1).all() and metrics["pixel_auroc"] == metrics["pixel_auroc_no_good"]
    if config.model_selection == "test_auroc" and "selected_epoch" in metrics:
        assert metrics["selected_epoch"] == 1


class TinyVAE(VAE):
    """One conv (4 channels, stride 2) and linear maps: a stand-in where the architecture does not matter."""

    def __init__(self, channels, side, generator):
        super().__init__()
        self.z_dim = 4
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            self.encoder = nn.Sequential(nn.Conv2d(channels, 4, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                                         nn.Linear(4 * (side // 2) ** 2, 2 * self.z_dim))
            self.decoder = nn.Sequential(nn.Linear(self.z_dim, channels * side * side),
                                         nn.Unflatten(1, (channels, side, side)))


@pytest.fixture
def tiny_models(monkeypatch):
    """AnomalyState builds ``TinyVAE``s (attention layer ``encoder.0``): checkpoints of kilobytes."""
    from vae_attention.training.anomaly import state as state_module

    def build(config, generator):
        return TinyVAE(config.in_channels, config.resolved_image_size, generator)

    monkeypatch.setattr(state_module, "build_model", build)


def test_best_iou_seed_is_the_macro_jaccard_per_batch_at_its_threshold(mvtec_root, tmp_path, tiny_models):
    from sklearn.metrics import jaccard_score

    state = AnomalyState(_mvtec(mvtec_root[0], batch_size=3, augment=False, attention_layer="encoder.0"),
                         device="cpu")
    state.advance()
    state.model.eval()
    data = evaluate_module.collect(state, [state.config.resolved_layer])
    maps, masks = data.maps[state.config.resolved_layer], data.masks
    metrics, _ = evaluate_module.evaluate(state, tmp_path / "figure.png")
    t = metrics["best_threshold_seed"]
    per_batch = [jaccard_score(masks[b].flatten().numpy(), (maps[b] > t).flatten().numpy().astype(np.uint8),
                               average="macro") for b in data.batches]
    assert len(data.batches) == 2  # 4 test images in batches of 3 and 1: the report's unweighted batch mean
    assert metrics["best_iou_seed"] == pytest.approx(float(np.mean(per_batch)), abs=1e-9)


# ---- early stopping and model selection, on constructed sequences ------------------------------------------------

def _run(state, epochs, directory):
    """run_loop with every unit reported, checkpointed (into ``directory/ckpt<epoch>``) and evaluated."""
    reports = []

    def report(metrics, write):
        reports.append(metrics)
        (directory / f"ckpt{metrics['epoch']}").mkdir()
        write(directory / f"ckpt{metrics['epoch']}")

    run_loop(state, Schedule(epochs, 1, 1, 1), report, directory)
    return reports


def test_early_stopping_stops_at_the_right_epoch_and_resumes(mnist_root, tmp_path, monkeypatch, tiny_models):
    # patience 2: 5 (best) → 4 (best) → 4 (not strictly lower: wait 1) → 4.5 (wait 2: stop after epoch 4)
    sequence = [5.0, 4.0, 4.0, 4.5, 1.0, 1.0]
    monkeypatch.setattr(evaluate_module, "evaluate", lambda state, path: ({"image_auroc": 0.5}, None))
    config = _mnist(mnist_root, early_stopping_patience=2)
    state = AnomalyState(config, device="cpu")
    feed = iter(sequence)
    monkeypatch.setattr(state, "holdout_loss", lambda: next(feed))
    reports = _run(state, 6, tmp_path)
    assert [r["epoch"] for r in reports] == [1, 2, 3, 4]
    assert [r["holdout_loss"] for r in reports] == sequence[:4]
    assert reports[-1]["stopped_early"] == 1.0 and "stopped_early" not in reports[-2]
    assert (tmp_path / "ckpt4" / WEIGHTS_FILE).is_file()  # the early stop's epoch is the final one

    resumed = AnomalyState(config, device="cpu")  # from the checkpoint after epoch 3 (wait = 1)
    resumed.load(tmp_path / "ckpt3" / "state.pt")
    assert resumed.early_stopping == {"best": 4.0, "wait": 1, "stopped_epoch": None}
    feed = iter(sequence[3:])
    monkeypatch.setattr(resumed, "holdout_loss", lambda: next(feed))
    again = tmp_path / "again"
    again.mkdir()
    assert [r["epoch"] for r in _run(resumed, 6, again)] == [4] and resumed.finished
    for key, value in torch.load(tmp_path / "ckpt4" / WEIGHTS_FILE, weights_only=True).items():
        assert torch.equal(value, resumed.weights()[key]), key  # the same run, bit-identical on CPU


def test_model_selection_keeps_the_best_evaluations_weights(mnist_root, tmp_path, monkeypatch, tiny_models):
    aurocs = iter([0.6, 0.9, 0.7, 0.9])  # best at epoch 2; the tie at epoch 4 does not replace it (strict)
    monkeypatch.setattr(evaluate_module, "evaluate", lambda state, path: ({"image_auroc": next(aurocs)}, None))
    config = _mnist(mnist_root, model_selection="test_auroc")
    state = AnomalyState(config, device="cpu")
    after_epoch = {}
    advance = state.advance

    def recording_advance():
        advance()
        after_epoch[state.epoch] = {k: v.clone() for k, v in state.model.state_dict().items()}

    monkeypatch.setattr(state, "advance", recording_advance)
    reports = _run(state, 4, tmp_path)
    assert [r["selected_epoch"] for r in reports] == [1, 2, 2, 2]
    assert reports[-1]["selected_image_auroc"] == 0.9 and reports[-1]["image_auroc"] == 0.9
    final = torch.load(tmp_path / "ckpt4" / WEIGHTS_FILE, weights_only=True)
    assert any(not torch.equal(after_epoch[2][k], after_epoch[4][k]) for k in final)
    for key, value in final.items():
        assert torch.equal(value, after_epoch[2][key]), key
    resumed = AnomalyState(config, device="cpu")  # the selection survives a checkpoint
    resumed.load(tmp_path / "ckpt4" / "state.pt")
    for key, value in resumed.weights().items():
        assert torch.equal(value, after_epoch[2][key]), key
