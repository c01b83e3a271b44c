"""The training objectives of the anomaly study (``AnomalyConfig.loss``) and what the decoder's output means.

``elbo`` (default): −ELBO with a Bernoulli decoder, in nats per image: BCE-with-logits summed over pixels and
the analytic KL(N(μ, σ²) ‖ N(0, I)) summed over latent dims, both averaged over the batch
(``vae_attention.losses``).

``seed``: the report's ``ExpVAE.loss_f`` (Carmoondedraak/FACT-2021, ``expVAE_pl/exp_vae_pl.py``, lines 55–84):

    L = L_rec + 0.1 · mean_{b,i} [log q(z_bi | x_b) − log p(z_bi)],   z = μ + σ ε (the sample the decoder saw)

with L_rec = BCE summed over every pixel of the whole batch (``F.binary_cross_entropy(..., 'sum')``, not divided
by the batch size) for MNIST and UCSD, and the MSE averaged over every element (``F.mse_loss(..., 'mean')``) for
MVTec, whose pl_bolts decoder ends in a plain conv (the output is the reconstruction, not logits). The KL term
is a one-sample Monte-Carlo estimate averaged over batch *and* latent dims (``kl.mean()``), so per dimension it is
z_dim times smaller than a summed KL, and weighted by 0.1. With q = N(μ, σ²), p = N(0, 1):
log q(z) − log p(z) = −(z − μ)² / (2σ²) − ½ log σ² + z² / 2 (the ½ log 2π terms cancel).

The report's MNIST/UCSD decoders end in a sigmoid and use ``binary_cross_entropy`` on its output; ours return
logits and use ``binary_cross_entropy_with_logits``: the same function, except that PyTorch clamps the log of a
saturated sigmoid at −100 and the logits form does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vae_attention import losses
from vae_attention.models import VAEOutput
from vae_attention.training.anomaly.config import AnomalyConfig

SEED_KL_WEIGHT = 0.1  # exp_vae_pl.py, loss_f: L_reg = kl * 0.1


def one_sample_kl(mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """mean over batch and latent dims of log N(z; μ, σ²) − log N(z; 0, 1): the report's KL estimate."""
    log_q = -(z - mu).pow(2) / (2.0 * logvar.exp()) - 0.5 * logvar
    log_p = -z.pow(2) / 2.0
    return (log_q - log_p).mean()


def reconstruction(config: AnomalyConfig, out_recon: torch.Tensor) -> torch.Tensor:
    """The reconstructed image in input space: sigmoid of Bernoulli logits, or the decoder output itself."""
    return torch.sigmoid(out_recon) if config.recon_is_logits else out_recon


def anomaly_loss(config: AnomalyConfig, out: VAEOutput, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss to minimise, {loss, recon_loss, kld} as floats) for one batch under ``config.loss``.

    ``kld`` is the analytic KL per image for ``elbo`` and the unweighted one-sample estimate (per image and
    latent dimension) for ``seed``; ``loss`` = recon_loss + kld resp. recon_loss + 0.1 · kld.
    """
    if config.loss == "elbo":
        recon = losses.bernoulli_recon_loss(out.recon_logits, x)
        kld = losses.gaussian_kl(out.mu, out.logvar)
        loss = recon + kld
    else:
        if config.recon_is_logits:
            recon = F.binary_cross_entropy_with_logits(out.recon_logits, x, reduction="sum")
        else:
            recon = F.mse_loss(out.recon_logits, x, reduction="mean")
        kld = one_sample_kl(out.mu, out.logvar, out.z)
        loss = recon + SEED_KL_WEIGHT * kld
    return loss, {"loss": float(loss.detach()), "recon_loss": float(recon.detach()), "kld": float(kld.detach())}
