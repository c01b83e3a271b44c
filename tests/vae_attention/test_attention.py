"""Attention maps against independent oracles: captum's LayerGradCam, linearity, closed forms, gradcheck."""

import pytest
import torch
from captum.attr import LayerGradCam
from torch import nn

from vae_attention import ConfigError
from vae_attention.attention import attention_maps, encode_with_activation
from vae_attention.models import VAE, DSpritesVAE, MNISTConvVAE, init_normal_


def _seeded(model_cls, seed=0, **kwargs):
    return model_cls(generator=torch.Generator().manual_seed(seed), **kwargs)


def _images(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


class TinyVAE(VAE):
    """Smooth (tanh) two-conv VAE, small enough for float64 gradcheck."""

    def __init__(self, inplace_relu=False, smooth=True):
        super().__init__()
        self.z_dim = 3
        act = nn.Tanh() if smooth else nn.ReLU(inplace=inplace_relu)
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 4, 3, 2, 1), act, nn.Conv2d(4, 4, 3, 1, 1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4 * 4, 6)
        )
        self.decoder = nn.Sequential(nn.Linear(3, 64), nn.Unflatten(1, (1, 8, 8)))
        init_normal_(self, std=0.5, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(
    "model_cls, layer, shape", [(DSpritesVAE, "encoder.0", (3, 1, 64, 64)), (MNISTConvVAE, "encoder.2", (3, 1, 28, 28))]
)
def test_sum_relu_equals_captum_layer_gradcam(model_cls, layer, shape):
    model = _seeded(model_cls).eval()
    x = _images(shape)
    module = dict(model.named_modules())[layer]
    cam = LayerGradCam(lambda inp: model.encode(inp)[0].sum(dim=1), module)
    expected = cam.attribute(x, relu_attributions=True)[:, 0].detach()
    ours = attention_maps(model, x, layer, score="sum", activation="relu", size=tuple(expected.shape[-2:]))
    assert expected.abs().max() > 0
    torch.testing.assert_close(ours, expected, atol=1e-5 * float(expected.abs().max()), rtol=1e-5)


@pytest.mark.parametrize("create_graph", [False, True])
def test_loop_and_batched_per_dim_gradients_agree(create_graph):
    model = _seeded(DSpritesVAE)
    x = _images((4, 1, 64, 64))
    kwargs = dict(score="per_dim", dims=[0, 3, 7], create_graph=create_graph, activation="relu")
    loop = attention_maps(model, x, "encoder.2", grad_method="loop", **kwargs)
    batched = attention_maps(model, x, "encoder.2", grad_method="batched", **kwargs)
    scale = float(loop.detach().abs().max())
    assert loop.shape == (4, 3, 64, 64) and scale > 0
    torch.testing.assert_close(loop, batched, atol=1e-5 * scale, rtol=1e-5)
    if create_graph:
        w = model.encoder[0].weight
        (g_loop,) = torch.autograd.grad(loop.sum(), w)
        (g_batched,) = torch.autograd.grad(batched.sum(), w)
        torch.testing.assert_close(g_loop, g_batched, atol=1e-5 * float(g_loop.abs().max()), rtol=1e-5)


@pytest.mark.parametrize("score", ["sum", "per_dim", "mean_per_dim"])
def test_batched_maps_equal_per_image_maps_in_eval_mode(score):
    model = _seeded(MNISTConvVAE).eval()
    x = _images((5, 1, 28, 28))
    batched = attention_maps(model, x, "encoder.2", score=score, normalize_grads="per_image")
    single = torch.cat([attention_maps(model, x[i : i + 1], "encoder.2", score=score, normalize_grads="per_image")
                        for i in range(5)])
    torch.testing.assert_close(batched, single, atol=1e-6 * float(single.abs().max()), rtol=1e-5)


def test_gradients_are_linear_in_the_score():
    """Σ_i CAM_i = CAM_Σ before the activation: α and the weighted sum are linear in the score."""
    model = _seeded(DSpritesVAE)
    x = _images((2, 1, 64, 64))
    per_dim = attention_maps(model, x, "encoder.4", score="per_dim", activation="none")
    total = attention_maps(model, x, "encoder.4", score="sum", activation="none")
    torch.testing.assert_close(per_dim.sum(dim=1), total, atol=1e-6 * float(total.abs().max()), rtol=1e-4)


def test_activation_modes_and_mean_per_dim():
    model = _seeded(DSpritesVAE)
    x = _images((2, 1, 64, 64))
    raw = attention_maps(model, x, "encoder.0", score="per_dim", activation="none")
    relu = attention_maps(model, x, "encoder.0", score="per_dim", activation="relu")
    absolute = attention_maps(model, x, "encoder.0", score="per_dim", activation="abs")
    mean = attention_maps(model, x, "encoder.0", score="mean_per_dim", activation="relu")
    # bilinear upsampling is a positive linear map, so it commutes with |·| only up to sign mixing;
    # compare at the layer's own resolution where no interpolation happens.
    size = (32, 32)
    raw_l = attention_maps(model, x, "encoder.0", score="per_dim", activation="none", size=size)
    torch.testing.assert_close(attention_maps(model, x, "encoder.0", score="per_dim", activation="relu", size=size),
                               raw_l.clamp(min=0))
    torch.testing.assert_close(attention_maps(model, x, "encoder.0", score="per_dim", activation="abs", size=size),
                               raw_l.abs())
    assert (relu >= 0).all() and (absolute >= 0).all() and (raw < 0).any()
    torch.testing.assert_close(mean, relu.mean(dim=1))


def test_gradient_normalisation_closed_forms():
    model = _seeded(DSpritesVAE)
    x = _images((3, 1, 64, 64))
    size = (32, 32)
    mu, feats = encode_with_activation(model, x, "encoder.0")
    (grads,) = torch.autograd.grad(mu.sum(), feats)
    per_image_rms = grads.pow(2).mean(dim=(1, 2, 3)).sqrt()
    batch_rms = grads.pow(2).mean().sqrt()
    plain = attention_maps(model, x, "encoder.0", size=size)
    per_image = attention_maps(model, x, "encoder.0", normalize_grads="per_image", size=size)
    batch = attention_maps(model, x, "encoder.0", normalize_grads="batch", size=size)
    torch.testing.assert_close(per_image, plain / per_image_rms[:, None, None], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(batch, plain / batch_rms, rtol=1e-4, atol=1e-7)
    # batch normalisation couples images; per-image normalisation does not
    other = torch.cat([x[:1], _images((2, 1, 64, 64), seed=9)])
    batch_other = attention_maps(model, other, "encoder.0", normalize_grads="batch", size=size)
    per_image_other = attention_maps(model, other, "encoder.0", normalize_grads="per_image", size=size)
    torch.testing.assert_close(per_image_other[0], per_image[0])
    assert not torch.allclose(batch_other[0], batch[0])


def test_in_place_relu_after_layer_does_not_corrupt_the_activation():
    x = _images((2, 1, 8, 8), seed=1)
    plain = TinyVAE(inplace_relu=False, smooth=False)
    inplace = TinyVAE(inplace_relu=True, smooth=False)
    inplace.load_state_dict(plain.state_dict())
    _, captured = encode_with_activation(inplace, x, "encoder.0")
    pre_relu = inplace.encoder[0](x)
    assert (pre_relu < 0).any()  # the in-place ReLU would have zeroed these in the saved tensor
    torch.testing.assert_close(captured, pre_relu)
    for score in ["sum", "per_dim"]:
        a = attention_maps(plain, x, "encoder.0", score=score, activation="none")
        b = attention_maps(inplace, x, "encoder.0", score=score, activation="none")
        torch.testing.assert_close(a, b)


def test_gradcheck_float64_through_the_maps():
    model = TinyVAE().double()
    x = _images((2, 1, 8, 8), seed=2).double().requires_grad_(True)

    def maps_of(inp):
        return attention_maps(model, inp, "encoder.0", score="per_dim", activation="none",
                              normalize_grads="per_image", create_graph=True)

    assert torch.autograd.gradcheck(maps_of, (x,), eps=1e-6, atol=1e-5)


def test_per_image_dims_and_shapes():
    model = _seeded(DSpritesVAE)
    x = _images((3, 1, 64, 64))
    dims = torch.tensor([[0, 1], [2, 3], [4, 5]])
    chosen = attention_maps(model, x, "encoder.0", score="per_dim", dims=dims, size=(16, 16))
    everything = attention_maps(model, x, "encoder.0", score="per_dim", size=(16, 16))
    assert chosen.shape == (3, 2, 16, 16)
    torch.testing.assert_close(chosen, torch.stack([everything[b, dims[b]] for b in range(3)]))
    assert attention_maps(model, x, "encoder.0").shape == (3, 64, 64)
    assert not attention_maps(model, x, "encoder.0").requires_grad


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layer="encoder.99"), "not a module"),
        (dict(layer="encoder.9"), "outputs shape"),
        (dict(layer="encoder.0", score="max"), "score="),
        (dict(layer="encoder.0", activation="sigmoid"), "activation="),
        (dict(layer="encoder.0", score="per_dim", dims=[10]), "dims must lie"),
    ],
)
def test_bad_arguments_raise_one_line_config_errors(kwargs, match):
    model = _seeded(DSpritesVAE)
    with pytest.raises(ConfigError, match=match) as err:
        attention_maps(model, _images((1, 1, 64, 64)), **kwargs)
    assert "\n" not in str(err.value)


def test_upsample_first_takes_the_activation_of_the_upsampled_map():
    """The authors' order: |bilinear(Σ_k α_k A_k)|, against the paper's bilinear(act(Σ_k α_k A_k))."""
    import torch.nn.functional as F

    model = _seeded(MNISTConvVAE).eval()
    x = _images((2, 1, 28, 28))
    raw = attention_maps(model, x, "encoder.2", activation="none", size=(7, 7))
    upsampled = F.interpolate(raw[:, None], size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    authors = attention_maps(model, x, "encoder.2", activation="abs", upsample_first=True)
    paper_order = attention_maps(model, x, "encoder.2", activation="abs")
    torch.testing.assert_close(authors, upsampled.abs())
    assert not torch.allclose(authors, paper_order)  # the order matters where the map changes sign


def test_check_layer_rejects_non_spatial_layers_and_wrong_input_sizes():
    from vae_attention.attention import check_layer

    model = _seeded(DSpritesVAE)
    assert check_layer(model, "encoder.4", torch.zeros(1, 1, 64, 64)) == (1, 64, 8, 8)
    with pytest.raises(ConfigError, match="outputs shape"):
        check_layer(model, "encoder.9", torch.zeros(1, 1, 64, 64))
    with pytest.raises(ConfigError, match="cannot encode"):
        check_layer(model, "encoder.0", torch.zeros(1, 1, 32, 32))
    assert model.training  # restored
