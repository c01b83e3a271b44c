"""Latent attention localises a pasted anomaly; the anomaly training state trains, evaluates and resumes."""

import pytest
import torch
from torch import nn

from vae_attention import losses
from vae_attention.attention import attention_maps
from vae_attention.metrics import pixel_auroc
from vae_attention.models import VAE, ResNet18VAE, init_normal_
from vae_attention.training import AnomalyConfig, AnomalyState


class SmallConvVAE(VAE):
    """Two convs (16, 32 channels) on 28×28: small enough to train in a second or two on CPU."""

    def __init__(self, generator):
        super().__init__()
        self.z_dim = 8
        self.encoder = nn.Sequential(nn.Conv2d(1, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(),
                                     nn.Flatten(), nn.Linear(32 * 7 * 7, 2 * self.z_dim))
        self.decoder = nn.Sequential(nn.Linear(self.z_dim, 32 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (32, 7, 7)),
                                     nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(16, 1, 4, 2, 1))
        init_normal_(self, std=0.05, generator=generator)


def clean_images(n, g):
    """Soft Gaussian blobs (σ 3–5 px) around the centre of a dark 28×28 canvas: the normal class."""
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centre = 9 + 10 * torch.rand(n, 2, generator=g)
    sigma = 3 + 2 * torch.rand(n, 1, 1, generator=g)
    dist2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
    return torch.exp(-dist2 / (2 * sigma**2)).unsqueeze(1)


def with_pasted_square(n, g, side=6):
    """Clean images with a bright side×side square pasted at a random place; returns images and masks."""
    x, masks = clean_images(n, g), torch.zeros(n, 28, 28)
    for i in range(n):
        r, c = torch.randint(0, 28 - side, (2,), generator=g).tolist()
        x[i, 0, r: r + side, c: c + side] = 1.0
        masks[i, r: r + side, c: c + side] = 1
    return x, masks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_attention_scores_a_pasted_square_above_the_background(seed):
    """Pixel AUROC of the maps against the square's mask, for the authors' and the paper's attention.

    Measured with this setup: 0.88–0.92 (Σμ, |·|) and 0.94–0.96 (mean of ReLU maps) at the first conv.
    An untrained encoder scores the bright square about as high (its activations follow intensity), so
    this checks that the maps point at the anomaly through the whole pipeline, not that training is what
    makes them do so; at the second conv (7×7) the Σμ map is weaker after 150 steps (0.50–0.69).
    """
    g = torch.Generator().manual_seed(seed)
    model = SmallConvVAE(torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(150):
        x = clean_images(32, g)
        out = model(x, generator=g)
        loss = losses.bernoulli_recon_loss(out.recon_logits, x) + losses.gaussian_kl(out.mu, out.logvar)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, masks = with_pasted_square(64, g)
    for score, activation in [("sum", "abs"), ("mean_per_dim", "relu")]:  # the authors' and the paper's maps
        maps = attention_maps(model, x, "encoder.0", score=score, activation=activation)
        assert pixel_auroc(maps, masks) > 0.7, (score, seed)


def test_resnet18_vae_shapes_gradients_and_eval_mode_maps():
    model = ResNet18VAE(z_dim=32, image_size=64, generator=torch.Generator().manual_seed(0))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    out = model(x, generator=torch.Generator().manual_seed(2))
    assert out.recon_logits.shape == (2, 3, 64, 64) and out.mu.shape == out.logvar.shape == (2, 32)
    (losses.bernoulli_recon_loss(out.recon_logits, x) + losses.gaussian_kl(out.mu, out.logvar)).backward()
    for name in ("encoder.conv1.weight", "encoder.layer3.1.conv2.weight", "encoder.fc.weight", "decoder.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    model.eval()
    maps = attention_maps(model, x, "encoder.layer3.1.conv2", score="sum", activation="abs")
    alone = attention_maps(model, x[:1], "encoder.layer3.1.conv2", score="sum", activation="abs")
    assert maps.shape == (2, 64, 64)
    torch.testing.assert_close(maps[:1], alone, rtol=1e-4, atol=1e-6 * float(alone.max()))
    with pytest.raises(Exception, match="multiple of 32"):
        ResNet18VAE(image_size=100)


def _mvtec_config(root, **changes):
    base = dict(dataset="mvtec", category="bottle", data_dir=str(root), image_size=64, epochs=4, batch_size=2,
                checkpoint_every=1, eval_every=2, num_bins=1024, figure_images=2, augment=True, seed=3)
    return AnomalyConfig(**{**base, **changes})


def test_mvtec_state_trains_one_epoch_and_evaluates(mvtec_root, tmp_path):
    state = AnomalyState(_mvtec_config(mvtec_root[0]), device="cpu")
    before = [p.detach().clone() for p in state.model.parameters()]
    state.advance()
    window = state.pop_window()
    assert set(window) == {"loss", "recon_loss", "kld"} and state.epoch == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, state.model.parameters(), strict=True))
    metrics, figure = state.evaluate(tmp_path)
    for key in ("pixel_auroc", "best_iou", "best_threshold", "best_iou_per_batch", "baseline_pixel_auroc",
                "pixel_auroc_no_good", "best_iou_no_good"):
        assert key in metrics, key
    assert 0 <= metrics["pixel_auroc"] <= 1 and 0 <= metrics["best_iou"] <= 1
    assert figure.is_file() and figure.stat().st_size > 1000
    assert state.model.training  # evaluation restores training mode


def test_anomaly_state_resumes_bit_identically(mvtec_root, tmp_path):
    config = _mvtec_config(mvtec_root[0])
    straight = AnomalyState(config, device="cpu")
    for _ in range(3):
        straight.advance()
    first = AnomalyState(config, device="cpu")
    first.advance()
    torch.save(first.state_dict(), tmp_path / "state.pt")
    second = AnomalyState(config, device="cpu")
    second.load(tmp_path / "state.pt")
    for _ in range(2):
        second.advance()
    for key, value in straight.weights().items():
        assert torch.equal(value, second.weights()[key]), key
    assert straight.pop_window() == second.pop_window()


def test_evaluation_numbers_match_sklearn_on_the_collected_maps(mvtec_root):
    from sklearn.metrics import roc_auc_score

    from vae_attention.training.anomaly.evaluate import collect, pixel_metrics

    state = AnomalyState(_mvtec_config(mvtec_root[0], num_bins=65_536), device="cpu")
    state.advance()
    state.model.eval()
    data = collect(state, [state.config.resolved_layer])
    maps, masks = data.maps[state.config.resolved_layer], data.masks
    ours = pixel_metrics(maps, masks, data.batches, state.config.num_bins)
    expected = roc_auc_score(masks.flatten().numpy(), maps.flatten().numpy())
    assert ours["pixel_auroc"] == pytest.approx(expected, abs=1e-3)
    # the best IoU over all thresholds, brute force on the distinct scores
    flat, truth = maps.flatten(), masks.flatten().bool()
    best = max(float((truth & (flat >= t)).sum() / (truth | (flat >= t)).sum()) for t in flat.unique()[::7])
    assert ours["best_iou"] >= best - 1e-3
    assert data.figure_images.shape[0] == 2 and (data.labels[data.figure_index] == 1).all()


def test_mnist_image_auroc_ranks_outlier_digits_high(mnist_root, tmp_path):
    """Direction of the image-level AUROC: outliers (label 1) must score higher to reach 1."""
    from sklearn.metrics import roc_auc_score

    from vae_attention.training.anomaly.evaluate import collect

    config = AnomalyConfig(dataset="mnist", digit=1, data_dir=str(mnist_root), epochs=2, batch_size=4,
                           checkpoint_every=1, eval_every=1, figure_images=2, eval_digits=(7, 4))
    state = AnomalyState(config, device="cpu")
    assert set(state.test_set.digits.tolist()) == {1, 7, 4}
    state.advance()
    metrics, _ = state.evaluate(tmp_path)
    state.model.eval()
    data = collect(state, [config.resolved_layer])
    scores = data.maps[config.resolved_layer].flatten(1).mean(1).numpy()
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(data.labels.numpy(), scores))


def test_resume_refuses_a_checkpoint_of_another_config(mvtec_root, tmp_path):
    from vae_attention import ConfigError

    first = AnomalyState(_mvtec_config(mvtec_root[0]), device="cpu")
    torch.save(first.state_dict(), tmp_path / "state.pt")
    other = AnomalyState(_mvtec_config(mvtec_root[0], lr=1e-2), device="cpu")
    with pytest.raises(ConfigError, match="lr: 0.001 -> 0.01"):
        other.load(tmp_path / "state.pt")


@pytest.mark.parametrize("changes, message", [
    (dict(dataset="ucsd", image_size=64), "takes 100² inputs only"),
    (dict(dataset="mvtec", category="bottle", image_size=100), "multiple of 32"),
    (dict(dataset="mvtec", category=""), "needs a category"),
    (dict(dataset="mnist", digit=None), "MNIST needs digit"),
])
def test_anomaly_config_rejects_sizes_the_models_cannot_take(changes, message):
    from vae_attention import ConfigError

    with pytest.raises(ConfigError, match=message):
        AnomalyConfig(**changes)


def test_variable_length_tuples_coerce_from_strings():
    assert AnomalyConfig.from_dict({"digit": "1", "eval_digits": "7,4,9"}).eval_digits == (7, 4, 9)
    assert AnomalyConfig.from_dict({"digit": 3, "eval_digits": [8]}).eval_digits == (8,)
