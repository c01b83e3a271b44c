"""Thin Ray Tune function trainables: config dict → typed config → training loop, with Tune reporting."""
