"""Data sets. dSprites: the official npz if present, else a generated stand-in, via a packed cache."""

from vae_attention.data.dsprites import NPZ_NAME, DSprites

__all__ = ["NPZ_NAME", "DSprites"]
