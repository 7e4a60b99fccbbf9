"""finetune plugin: PointNet++ for mesh-to-mesh retrieval (``pointnet-base``, ``pointnet-small``).

Jina Finetuner's one mesh backbone, ``pointnet-base``: a PointNet++ encoder embedding 2,048 points
sampled on a mesh's surface into 512 dimensions, trained from scratch (there are no pretrained weights).
Items are mesh files, point files or ``(N, 3)`` arrays; see :mod:`finetune_pointnet.points`.

The features handed to the core are the global MLP's outputs at the second-level centroids (layout
'tokens'): the model's own pooling is their max, as in the paper, followed by the embedding head;
``pooler='GeM'`` or ``'avg'`` replaces the max and keeps the head.
"""
from __future__ import annotations

from finetune.registry import BackbonePlugin

from .points import MESH
from .specs import TASK
from .specs import specs as _specs  # `specs` stays the submodule

plugin = BackbonePlugin(name='pointnet', specs=_specs, tasks=(TASK,), modalities=(MESH,),
                        note='PointNet++ for meshes and point clouds (mesh-to-mesh), trained from scratch')

__all__ = ['plugin']
