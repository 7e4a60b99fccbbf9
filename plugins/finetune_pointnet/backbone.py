"""PointNet++ as a finetune backbone: ``(N, P, 3)`` float clouds in, ``(N, S, hidden_dim)`` tokens out."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from finetune.backbone import TOKENS, Backbone, Features
from finetune.errors import InputError

from .network import VARIANTS, PointNet2
from .points import PointPreprocessor, mesh_file_problem

#: fewest points a cloud may have: 16 leave one centroid after the two set abstractions' 1-in-4 sampling
MIN_MODEL_POINTS = 16


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
