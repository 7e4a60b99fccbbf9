"""The PointNet++ plugin's models (``pointnet-base``, ``pointnet-small``), their options and specs."""
from __future__ import annotations

import functools
from typing import Any

from finetune.backbone import TOKENS
from finetune.errors import OptionError
from finetune.options import Option, fraction, positive_int
from finetune.registry import BackboneSpec

from .backbone import MIN_MODEL_POINTS
from .build import build
from .points import point_preprocess_options

TASK = 'mesh-to-mesh'


def _at_least(minimum: int):
    check = positive_int()

    def validate(name: str, value: Any) -> int:
        value = check(name, value)
        if value < minimum:
            raise OptionError(f'option {name!r}: expected an integer >= {minimum}, got {value!r}.')
        return value
    return validate


def _options(num_points: int, embed_dim: int, hidden_dim: int, dropout: float) -> tuple[Option, ...]:
    return (
        Option('num_points', 'int', num_points, 'points sampled from each mesh or cloud', _at_least(MIN_MODEL_POINTS)),
        Option('embed_dim', 'int', embed_dim, 'size of the embedding the head produces', positive_int()),
        Option('hidden_dim', 'int', hidden_dim, 'width of the global feature before the max (and of the '
               'pooled vector)', _at_least(2)),
        Option('dropout', 'float', dropout, 'dropout in the embedding head', fraction),
    )


def _spec(name: str, variant: str, defaults: tuple[int, int, int, float], description: str,
          alias_of: str | None = None, default_for: tuple[str, ...] = ()) -> BackboneSpec:
    return BackboneSpec(
        name=name,
        tasks=(TASK,),
        default_for=default_for,
        modality='mesh',
        architecture='pointnet++',
        output_dim=defaults[1],
        description=description,
        build=functools.partial(build, alias_of or name, variant),
        dims=lambda options: (options['embed_dim'], options['embed_dim']),
        options=_options(*defaults),
        preprocess_options=point_preprocess_options(),
        defaults={'pretrained': False},
        alias_of=alias_of,
        pooler_note="A pooler replaces the max over the second-level centroids' features; the embedding head "
                    'still follows, so output_dim stays embed_dim.',
        layout=TOKENS,
    )


def specs() -> list[BackboneSpec]:
    return [
        _spec('pointnet-base', 'base', (2048, 512, 1024, 0.1),
              'PointNet++ (SSG) on 2,048 surface points, 512-dim embeddings; trained from scratch',
              default_for=(TASK,)),
        _spec('pointnet-small', 'small', (1024, 256, 512, 0.1),
              'PointNet++ at half width on 1,024 points, 256-dim embeddings; for quick runs'),
    ]
