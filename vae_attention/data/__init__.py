"""Data sets. dSprites: the official npz if present, else a generated stand-in, via a packed cache.

Anomaly detection (official layouts on disk, nothing downloaded): one-class MNIST, MVTec AD, UCSD Ped1.
"""

from vae_attention.data.dsprites import NPZ_NAME, DSprites
from vae_attention.data.mnist import MNIST_EVAL_DIGITS, MNISTOneClass
from vae_attention.data.mvtec import MVTEC_CATEGORIES, MVTecAD
from vae_attention.data.ucsd import UCSDPed1

__all__ = ["MNIST_EVAL_DIGITS", "MVTEC_CATEGORIES", "NPZ_NAME", "DSprites", "MNISTOneClass", "MVTecAD", "UCSDPed1"]
