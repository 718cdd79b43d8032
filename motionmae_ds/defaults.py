"""Values that every floor shares, defined once: the pixel normalisation the loader applies and the model undoes.

The bottom floor: it imports nothing, and models, data and config take their defaults from it.
"""
from __future__ import annotations

# ImageNet statistics of RGB pixels in [0, 1] (what VideoMAE, timm and HF's VideoMAE normalise with)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
