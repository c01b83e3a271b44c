"""Latent traversals against one-code-at-a-time decodes, the plain reconstruction, per-image attention maps and
the files a viewer opens (PIL counts the GIF's frames)."""

import numpy as np
import pytest
import torch
from PIL import Image

from vae_attention import ConfigError
from vae_attention.attention import attention_maps
from vae_attention.models import DSpritesVAE, init_normal_
from vae_attention.traversals import (
    latent_traversal,
    reconstruct,
    traversal_attention,
    traversal_figures,
    traversal_offsets,
)


def _vae(seed: int) -> DSpritesVAE:
    """A random dSprites VAE with N(0, 0.1) weights: the default 0.02 gives near-constant decodes (sigmoid ≈ ½)
    in which a latent's effect is too small to test against."""
    vae = DSpritesVAE(z_dim=4, generator=torch.Generator().manual_seed(seed))
    init_normal_(vae, std=0.1, generator=torch.Generator().manual_seed(seed + 100))
    return vae


def _images(n: int, seed: int) -> torch.Tensor:
    return (torch.rand(n, 1, 64, 64, generator=torch.Generator().manual_seed(seed)) > 0.7).float()


def test_offsets_span_the_interval_with_an_exact_zero_in_the_middle():
    offsets = traversal_offsets(7, 3.0)
    np.testing.assert_allclose(offsets.numpy(), np.linspace(-3.0, 3.0, 7), atol=1e-6)
    for steps, span in [(5, 3.0), (9, 2.5), (11, 0.7)]:
        assert traversal_offsets(steps, span)[steps // 2].item() == 0.0
    assert 0.0 not in traversal_offsets(6, 3.0).tolist()
    for steps, span in [(1, 3.0), (7, 0.0), (7, -1.0)]:
        with pytest.raises(ConfigError):
            traversal_offsets(steps, span)


@pytest.mark.parametrize("seed, dims, steps", [(0, [0, 1, 2, 3], 5), (1, [3, 1], 4), (2, [2], 3)])
def test_traversal_equals_decoding_each_code_on_its_own(seed, dims, steps):
    vae = _vae(seed)
    x = _images(2, seed)
    traversed = latent_traversal(vae, x, dims, steps, span=3.0)
    assert traversed.shape == (2, len(dims), steps, 1, 64, 64)
    assert vae.training  # the caller's mode is restored

    # Oracle: μ from a separate eval-mode encode, one code per decode, offsets from numpy's linspace
    vae.eval()
    with torch.no_grad():
        mu, _ = vae.encode(x)
        for a in range(2):
            for j, d in enumerate(dims):
                for s, t in enumerate(np.linspace(-3.0, 3.0, steps)):
                    code = mu[a].clone()
                    code[d] += float(t)
                    expected = torch.sigmoid(vae.decode(code[None]))[0]
                    torch.testing.assert_close(traversed[a, j, s], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_middle_step_is_the_reconstruction_and_moving_one_latent_changes_the_image(seed):
    vae = _vae(seed)
    x = _images(3, seed)
    steps = 7
    traversed = latent_traversal(vae, x, None, steps)  # all z_dim = 4 dimensions
    plain = reconstruct(vae, x)
    vae.eval()
    with torch.no_grad():
        independent = torch.sigmoid(vae(x).recon_logits)  # eval-mode forward decodes z = μ
    torch.testing.assert_close(plain, independent)
    for j in range(4):
        # the anchor's own code: bit-identical to decoding μ (offset exactly 0)
        torch.testing.assert_close(traversed[:, j, steps // 2], plain, atol=1e-6, rtol=0)
        for s in range(steps):
            if s != steps // 2:
                change = (traversed[:, j, s] - plain).abs().flatten(1).max(dim=1).values
                assert (change > 1e-4).all(), (j, s, change)


def test_traversal_attention_is_each_images_map_of_the_swept_dimension():
    vae = _vae(5)
    dims = [2, 0]
    traversed = latent_traversal(vae, _images(2, 5), dims, steps=3)
    maps = traversal_attention(vae, traversed, dims, "encoder.2")
    assert maps.shape == (2, 2, 3, 64, 64)
    assert vae.training
    vae.eval()
    for a in range(2):
        for j, d in enumerate(dims):
            for s in range(3):
                alone = attention_maps(vae, traversed[a, j, s][None], "encoder.2", score="per_dim", dims=[d])
                torch.testing.assert_close(maps[a, j, s], alone[0, 0], atol=1e-6, rtol=1e-5)
    assert maps.abs().max() > 0
    with pytest.raises(ConfigError, match="2 swept dimensions but 3 dims"):
        traversal_attention(vae, traversed, [0, 1, 2], "encoder.2")


def test_figure_files_exist_and_the_gif_has_one_frame_per_step(tmp_path):
    vae = _vae(7)
    x = _images(4, 7)
    dims, steps = [0, 1, 2], 5
    traversed = latent_traversal(vae, x[:2], dims, steps)
    maps = traversal_attention(vae, traversed, dims, "encoder.0")
    paths = traversal_figures(x, reconstruct(vae, x), traversed, maps, dims, 3.0, 40, tmp_path, title="test")
    assert [p.name for p in paths] == ["traversal_0000040.png", "traversal_0000040.gif", "reconstruction_0000040.png"]
    for png in (paths[0], paths[2]):
        with Image.open(png) as image:
            assert image.format == "PNG" and min(image.size) > 100
    with Image.open(paths[1]) as gif:
        assert gif.format == "GIF" and gif.n_frames == steps and gif.info.get("loop") == 0
        # frame layout: a label strip, then per anchor a row of decodes and a row of overlays, one column per dim
        assert gif.size == (3 * 64 + 2 * 2, 4 * 64 + 3 * 2 + 2 * 14)


def test_an_evaluation_writes_attention_traversal_and_reconstruction_figures(tmp_path):
    from vae_attention.data import DSprites
    from vae_attention.training import DisentangleConfig, DisentangleState
    from vae_attention.training.disentangle.evaluate import TRAVERSAL_STEPS, evaluation_figures

    dataset = DSprites(grid=(3, 2, 4, 8, 8), cache_dir=tmp_path / "cache")
    config = DisentangleConfig(d_hidden_units=64, d_hidden_layers=2, batch_size=16, eval_size=64, z_dim=5)
    state = DisentangleState(config, dataset, device="cpu")
    state.iteration = 20
    paths = evaluation_figures(state, tmp_path)
    assert [p.name for p in paths] == ["attention_0000020.png", "traversal_0000020.png", "traversal_0000020.gif",
                                       "reconstruction_0000020.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    with Image.open(paths[2]) as gif:
        assert gif.n_frames == TRAVERSAL_STEPS
