"""finetune plugin: PointNet++ for mesh-to-mesh retrieval (``pointnet-base``, ``pointnet-small``).

Jina Finetuner's one mesh backbone, ``pointnet-base``: a PointNet++ encoder embedding 2,048 points
sampled on a mesh's surface into 512 dimensions, trained from scratch (there are no pretrained weights).
Items are mesh files, point files or ``(N, 3)`` arrays; see :mod:`finetune_pointnet.points`.

The features handed to the core are the global MLP's outputs at the second-level centroids (layout
'tokens'): the model's own pooling is their max, as in the paper, followed by the embedding head;
``pooler='GeM'`` or ``'avg'`` replaces the max and keeps the head.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import torch

from finetune.backbone import TOKENS, Backbone, Features
from finetune.errors import InputError, OptionError, WeightsNotFoundError
from finetune.options import Option, fraction, positive_int
from finetune.registry import BackbonePlugin, BackboneSpec
from finetune.weights import load_into, load_state_dict

from .network import VARIANTS, PointNet2, ball_query, farthest_point_sample
from .points import MESH, PointPreprocessor, mesh_file_problem, mesh_views, point_preprocess_options, read_shape

__all__ = ['PointNetBackbone', 'plugin', 'mesh_views', 'read_shape', 'farthest_point_sample', 'ball_query']

TASK = 'mesh-to-mesh'

#: fewest points a cloud may have: 16 leave one centroid after the two set abstractions' 1-in-4 sampling
MIN_MODEL_POINTS = 16


def _at_least(minimum: int):
    check = positive_int()

    def validate(name: str, value: Any) -> int:
        value = check(name, value)
        if value < minimum:
            raise OptionError(f'option {name!r}: expected an integer >= {minimum}, got {value!r}.')
        return value
    return validate


class PointNetBackbone(Backbone):
    """PointNet++ over ``(N, P, 3)`` float clouds; features are ``(N, S, hidden_dim)`` tokens."""
    default_learning_rate = 1e-3
    packages = ('trimesh',)

    modality = 'mesh'
    layout = TOKENS
    #: trained from scratch, batch-hard triplets (the core's default for labeled data) collapse every
    #: embedding to one point; a normalized-softmax classifier over the classes trains steadily
    default_losses = {'labeled': 'NormalizedSoftmaxLoss'}
    #: bf16 autocast steps 1.1-1.5x faster, but fits on the CGAL meshes (examples/mesh_retrieval.py) retrieved
    #: worse in every comparison, map@10 bf16 vs fp32: pointnet-small 0.432 vs 0.493 and 0.493 vs 0.528 (seeds
    #: 42, 7; equal wall time, sampling meshes bounds it), pointnet-base 0.636 vs 0.677 (20 vs 24 min)
    prefers_fp32 = True

    def __init__(self, name: str, variant: str, options: dict[str, Any]):
        super().__init__()
        self.model_name = name
        self.net = PointNet2(VARIANTS[variant], options['hidden_dim'], options['embed_dim'], options['dropout'])
        self.own_dim = self.pooled_dim = options['embed_dim']
        self.preprocessor = PointPreprocessor(options['num_points'], **options['preprocess_options'])

    def forward(self, batch: torch.Tensor) -> Features:
        dtype = self.net.head[0].weight.dtype  # float64 or float16 clouds run in the weights' precision
        return Features(self.net.tokens(batch.to(dtype)))

    def pool_own(self, features: Features) -> torch.Tensor:
        return self.after_pooler(features.tensor.max(dim=1).values)

    def after_pooler(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net.head(pooled)

    def preprocess(self, items: Sequence[Any]) -> torch.Tensor:
        return self.preprocessor(items)

    def preprocess_train(self, items: Sequence[Any]) -> torch.Tensor:
        return self.preprocessor.train_batch(items)

    def check_file(self, path: str) -> str | None:
        return mesh_file_problem(path)

    def check_batch(self, batch: Any) -> None:
        if not isinstance(batch, torch.Tensor):
            raise InputError(f'{self.model_name!r} is a point-cloud model: expected a (N, P, 3) tensor, got '
                             f'{type(batch).__name__}. Use model.encode(items) for mesh files, point files or '
                             f'(P, 3) arrays.')
        if batch.dim() != 3 or batch.shape[-1] != 3:
            raise InputError(f'{self.model_name!r} expects point clouds as a (N, P, 3) tensor, got shape '
                             f'{tuple(batch.shape)}.')
        if not batch.is_floating_point():
            raise InputError(f'{self.model_name!r} expects float coordinates, got {batch.dtype}.')
        if not torch.isfinite(batch).all():
            raise InputError(f'{self.model_name!r} got NaN or infinite coordinates.')
        if batch.shape[1] < MIN_MODEL_POINTS:
            raise InputError(f'{self.model_name!r} needs at least {MIN_MODEL_POINTS} points per cloud, got '
                             f'{batch.shape[1]}.')

    def layer_groups(self) -> list[str]:
        return ['net.sa1', 'net.sa2', 'net.global_mlp', 'net.head']


def build(name: str, variant: str, options: dict[str, Any]) -> PointNetBackbone:
    backbone = PointNetBackbone(name, variant, options)
    pretrained = options['pretrained']
    if pretrained is True:
        raise WeightsNotFoundError(
            f'{name!r} has no published pretrained weights: it is trained from scratch on your data. Build it '
            f"with model_options={{'pretrained': False}} (the default), or pass a weights file you saved.")
    if isinstance(pretrained, str):
        state = load_state_dict(pretrained)
        load_into(backbone, state, pretrained, name)
    return backbone


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


plugin = BackbonePlugin(name='pointnet', specs=specs, tasks=(TASK,), modalities=(MESH,),
                        note='PointNet++ for meshes and point clouds (mesh-to-mesh), trained from scratch')
