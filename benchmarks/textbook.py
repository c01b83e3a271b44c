"""An independent, textbook FactorVAE / AD-FactorVAE training step, written from the papers, as a yardstick.

    python -m benchmarks.textbook [--model factorvae|ad_factorvae|all] [--steps 30] [--threads 2] [--batch 64]
                                  [--pairs consecutive|random] [--layer last|first] [--quick]

Nothing here imports the project (``vae_attention``, ``trainables``): the models, data, losses and loop are
written out again, so that a slowdown shared by the project's own step cannot hide in the reference.

- Models: Kim & Mnih (2018), appendix Table 1, for 1×64×64 dSprites. Encoder: four 4×4 stride-2 convs
  (32, 32, 64, 64 channels; 64→32→16→8→4 px), FC 128, FC 2·z (μ, log σ²), z = 10. Decoder: the mirror
  (FC 128, FC 4·4·64, four 4×4 stride-2 transposed convs) giving Bernoulli logits. Discriminator: 6 hidden
  layers of 1000 units with LeakyReLU(0.2), then 2 logits (0 = q(z), 1 = ∏ q(z_j)). PyTorch default init.
- Data: a ``DataLoader`` (shuffle, batch 64, drop_last) over a ``TensorDataset`` of random binary 64×64 float
  images; two batches per step (Kim & Mnih, Alg. 1: x for the VAE, x' whose codes are permuted for D).
- FactorVAE step: VAE loss = BCE recon (nats/image) + KL + γ·TC, TC ≈ mean(D(z)₀ − D(z)₁); VAE Adam lr 1e-4,
  betas (0.9, 0.999). D loss = ½[CE(D(z.detach()), 0) + CE(D(permute_dims(z')), 1)]; D Adam lr 1e-4, betas
  (0.5, 0.9). z' is encoded under no_grad before the VAE update, so both updates see the same parameters.
- AD-FactorVAE (Liu et al., 2020): the activations A (B, C, H, W) of one encoder conv (the conv's output,
  before its ReLU) are kept during the VAE's own forward; for each latent dim i, ∂(Σ_b μ_bi)/∂A by
  ``autograd.grad(create_graph=True)`` one dimension at a time (Σ over the batch is exact: image b's μ
  depends only on image b's A), α_i = spatial mean of that gradient (B, C), map_i = ReLU(Σ_c α_ic A_c)
  (B, h, w), bilinearly upsampled to the 64×64 input (the paper's maps live at the input's resolution).
  L_AD = mean over images and pairs of 2·Σmin(A¹, A²)/Σ(A¹ + A²), pairs (0,1), (1,2), …, (8,9) of all 10
  maps (``consecutive``, the report's chain) or one random pair of distinct dims, whose 2 maps alone are
  computed (``random``); a pair of two all-zero maps (0/0) is left out of the mean. λ·L_AD joins the VAE
  loss, so its gradient is a double backward through the layers above A (the FC head for ``--layer last``;
  three convs and the head for ``--layer first``, the project's default).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.flops import HEADER, format_row, fraction_of_gemm, gemm_gflops, measure_rate, torch_threads

Z_DIM = 10
GAMMA = 40.0  # weight of the TC estimate: Kim & Mnih's dSprites setting (and the project's default)
LAMBDA_AD = 1.0  # weight of L_AD ∈ [0, 1]
AD_EPS = 1e-12  # guards 0/0 for a pair of all-zero maps (their overlap then counts as 0)
DATA_IMAGES = 2048  # 2048 × 64·64 float32 = 32 MiB held by the DataLoader's dataset
INPUT_SIZE = (64, 64)  # dSprites images; the maps are upsampled to it
LAYERS = {"first": 0, "last": 3}  # which encoder conv's activations the maps use: 32×32×32 or 64×4×4
PAIRS = ("consecutive", "random")
MODELS = ("factorvae", "ad_factorvae")


class Encoder(nn.Module):
    """x (B, 1, 64, 64) → μ, log σ² (B, z) and, if asked, the output of conv ``keep`` (kept in the graph)."""

    def __init__(self, z_dim: int = Z_DIM):
        super().__init__()
        widths = ((1, 32), (32, 32), (32, 64), (64, 64))  # (in, out) channels of the four 4×4 stride-2 convs
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 4, 2, 1) for c_in, c_out in widths)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 2 * z_dim))

    def forward(self, x: torch.Tensor, keep: int | None = None):
        kept = None
        h = x
        for index, conv in enumerate(self.convs):
            h = conv(h)
            if index == keep:
                kept = h
            h = F.relu(h)
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar, kept


def decoder(z_dim: int = Z_DIM) -> nn.Module:
    """z (B, z) → Bernoulli logits (B, 1, 64, 64): the encoder's mirror."""
    return nn.Sequential(
        nn.Linear(z_dim, 128), nn.ReLU(), nn.Linear(128, 64 * 4 * 4), nn.ReLU(), nn.Unflatten(1, (64, 4, 4)),
        nn.ConvTranspose2d(64, 64, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
        nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(32, 1, 4, 2, 1),
    )


def discriminator(z_dim: int = Z_DIM, units: int = 1000, layers: int = 6) -> nn.Module:
    """z (B, z) → 2 logits; ~5 M parameters, the bulk of FactorVAE's FLOPs at batch 64."""
    modules: list[nn.Module] = []
    width = z_dim
    for _ in range(layers):
        modules += [nn.Linear(width, units), nn.LeakyReLU(0.2)]
        width = units
    modules.append(nn.Linear(width, 2))
    return nn.Sequential(*modules)


def attention_maps(mu: torch.Tensor, acts: torch.Tensor, dims: Sequence[int], create_graph: bool = True):
    """Per-dimension Grad-CAM maps (B, len(dims), H, W) of μ (B, z) on activations ``acts`` (B, C, H, W).

    One ``autograd.grad`` per dimension (the textbook loop); ``create_graph`` keeps each map differentiable
    w.r.t. the encoder's parameters, which L_AD's gradient needs.
    """
    maps = []
    for i in dims:
        (grad,) = torch.autograd.grad(mu[:, i].sum(), acts, create_graph=create_graph, retain_graph=True)
        alpha = grad.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1): channel weights
        maps.append(F.relu((alpha * acts).sum(dim=1)))
    return F.interpolate(torch.stack(maps, dim=1), size=INPUT_SIZE, mode="bilinear", align_corners=False)


def ad_loss(maps: torch.Tensor, pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
    """L_AD: mean over images and ``pairs`` (indices into dim 1 of ``maps``) of 2·Σmin(A¹, A²)/Σ(A¹ + A²),
    over the pairs that have a positive pixel in either map."""
    a1 = maps[:, [p for p, _ in pairs]]
    a2 = maps[:, [q for _, q in pairs]]
    overlap = torch.minimum(a1, a2).sum(dim=(-2, -1))
    total = (a1 + a2).sum(dim=(-2, -1))
    counted = (a1.amax(dim=(-2, -1)) > 0) | (a2.amax(dim=(-2, -1)) > 0)
    return (2.0 * overlap / (total + AD_EPS) * counted).sum() / counted.sum().clamp(min=1)


def permute_dims(z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shuffle each latent dimension independently across the batch: samples of ∏_j q(z_j) (Kim & Mnih, Alg. 1)."""
    return torch.stack([z[torch.randperm(z.shape[0], generator=generator, device=z.device), j]
                        for j in range(z.shape[1])], dim=1)


class TextbookStep:
    """One call = one FactorVAE (or AD-FactorVAE) iteration: two batches, a VAE update and a D update.

    Returns the step's losses as detached tensors (no ``.item()``; the caller decides when to read them).
    """

    def __init__(self, model: str = "factorvae", batch: int = 64, pairs: str = "consecutive",
                 layer: str = "last", seed: int = 0, images: int = DATA_IMAGES, device: str = "cpu"):
        if model not in MODELS or pairs not in PAIRS or layer not in LAYERS:
            raise ValueError(f"model={model!r} in {MODELS}, pairs={pairs!r} in {PAIRS}, layer={layer!r} in "
                             f"{tuple(LAYERS)} expected")
        self.ad = model == "ad_factorvae"
        self.pairs, self.keep, self.batch, self.device = pairs, LAYERS[layer], batch, torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)  # z noise, permutations, pairs
        with torch.random.fork_rng(devices=[]):  # the models' default init draws from the global RNG
            torch.manual_seed(seed)
            self.encoder, self.decoder, self.disc = Encoder(), decoder(), discriminator()
        for module in (self.encoder, self.decoder, self.disc):
            module.to(self.device)
        self.vae_opt = torch.optim.Adam([*self.encoder.parameters(), *self.decoder.parameters()],
                                        lr=1e-4, betas=(0.9, 0.999))
        self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=1e-4, betas=(0.5, 0.9))
        # the data set stays on the host, as a DataLoader's does; each batch is copied to the device
        data = (torch.rand(images, 1, 64, 64, generator=torch.Generator().manual_seed(seed)) < 0.5).float()
        self.loader = DataLoader(TensorDataset(data), batch_size=batch, shuffle=True, drop_last=True,
                                 generator=torch.Generator().manual_seed(seed + 1))
        self.batches = iter(self.loader)

    def next_batch(self) -> torch.Tensor:
        try:
            return next(self.batches)[0].to(self.device, non_blocking=True)
        except StopIteration:  # a new epoch: a fresh shuffle
            self.batches = iter(self.loader)
            return next(self.batches)[0].to(self.device, non_blocking=True)

    def dims_and_pairs(self) -> tuple[list[int], list[tuple[int, int]]]:
        """Which dims' maps to compute, and the pairs as indices into those maps."""
        if self.pairs == "random":
            return torch.randperm(Z_DIM, generator=self.generator, device=self.device)[:2].tolist(), [(0, 1)]
        return list(range(Z_DIM)), [(i, i + 1) for i in range(Z_DIM - 1)]

    def __call__(self) -> dict[str, torch.Tensor]:
        x, x_prime = self.next_batch(), self.next_batch()
        mu, logvar, acts = self.encoder(x, self.keep if self.ad else None)
        z = mu + torch.randn(mu.shape, generator=self.generator, device=self.device) * (0.5 * logvar).exp()
        recon = F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum") / x.shape[0]
        kld = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1).mean()
        d_z = self.disc(z)
        tc = (d_z[:, 0] - d_z[:, 1]).mean()
        vae_loss = recon + kld + GAMMA * tc
        out = {"recon": recon, "kld": kld, "tc": tc}
        if self.ad:
            dims, pairs = self.dims_and_pairs()
            out["ad"] = ad_loss(attention_maps(mu, acts, dims), pairs)
            vae_loss = vae_loss + LAMBDA_AD * out["ad"]
        with torch.no_grad():  # z' only feeds D through permute_dims, which is detached anyway
            mu2, logvar2, _ = self.encoder(x_prime)
            z_prime = mu2 + torch.randn(mu2.shape, generator=self.generator, device=self.device) * (0.5 * logvar2).exp()

        self.vae_opt.zero_grad(set_to_none=True)
        vae_loss.backward()  # also fills D's grads through γ·TC; cleared below before D's own backward
        self.vae_opt.step()

        logits = self.disc(torch.cat([z.detach(), permute_dims(z_prime, self.generator)]))
        labels = torch.arange(2, device=self.device).repeat_interleave(x.shape[0])  # B zeros (joint), B ones
        d_loss = F.cross_entropy(logits, labels)  # = ½[CE(joint, 0) + CE(permuted, 1)] for equal halves
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_opt.step()
        out.update(vae_loss=vae_loss.detach(), d_loss=d_loss.detach())
        return {name: value.detach() for name, value in out.items()}


def textbook_iterations_per_s(model: str, steps: int, threads: int, batch: int = 64, pairs: str = "consecutive",
                              layer: str = "last") -> float:
    """Iterations/s of the textbook step on ``threads`` threads: 3 warm-up steps, then the median rate of
    3 timed blocks of ``steps``/3 steps each (DataLoader fetches included, as in any training loop)."""
    with torch_threads(threads):
        return measure_rate(TextbookStep(model, batch, pairs, layer), steps)


def rows_for(model: str, pairs: str) -> list[tuple[str, str]]:
    if model == "all":
        return [("factorvae", "consecutive"), ("ad_factorvae", "consecutive"), ("ad_factorvae", "random")]
    return [(model, pairs)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=(*MODELS, "all"), default="all",
                        help="all = factorvae, ad_factorvae consecutive, ad_factorvae random")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per row (3 blocks, median rate)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads for steps and GEMM")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--pairs", choices=PAIRS, default="consecutive", help="AD pair policy (ignored by all)")
    parser.add_argument("--layer", choices=tuple(LAYERS), default="last",
                        help="conv whose activations feed the maps: last (64×4×4) or first (32×32×32)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 timed steps, 1 warm-up, short 512³ GEMM")
    args = parser.parse_args(argv)
    # --quick: a 512³ GEMM (0.27 GFLOP a call) keeps the smoke test to seconds on a shared 2-core machine
    steps, warmup, gemm_size, gemm_seconds = (3, 1, 512, 0.2) if args.quick else (args.steps, 3, 1024, 1.0)

    print(f"textbook step: threads={args.threads} batch={args.batch} layer={args.layer} torch={torch.__version__}"
          f"{' (quick: figures are a smoke test, not a measurement)' if args.quick else ''}")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores - args.threads + 0.5:
        # Other processes hold the cores: spinning OpenMP threads then wait on descheduled peers, and a 2-thread
        # step can run several times slower than a 1-thread one. OMP_WAIT_POLICY=PASSIVE softens it.
        print(f"warning: load average {load:.1f} on {cores} cores; figures are noisy (OMP_WAIT_POLICY="
              f"{os.environ.get('OMP_WAIT_POLICY', 'unset')})")
    gemm = gemm_gflops(args.threads, gemm_size, gemm_seconds)
    print(f"fp32 GEMM {gemm_size}³ on {args.threads} threads: {gemm:.1f} GFLOP/s (each row re-measures it)")
    print(HEADER)
    for model, pairs in rows_for(args.model, args.pairs):
        step = TextbookStep(model, args.batch, pairs, args.layer)
        result = fraction_of_gemm(step, steps, args.threads, warmup=warmup, gemm_size=gemm_size,
                                  gemm_seconds=gemm_seconds)
        name = model if model == "factorvae" else f"{model} {pairs} ({args.layer} conv)"
        print(format_row(name, result), flush=True)


if __name__ == "__main__":
    main()
