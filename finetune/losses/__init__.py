"""Losses: the metric-learning objectives, registered by name, each declaring the data it fits.

Every loss is an ``nn.Module`` whose ``forward`` takes one :class:`LossInputs` and returns a scalar.
What the training code fills in depends on the data kind:

* ``'labeled'`` (item, label): ``embeddings`` (N, D) and ``labels`` (N,). Losses that work on pairs
  (InfoNCE) get ``anchors`` / ``positives`` instead: the training code pairs items of the same class
  (a class-balanced sampler puts several items of each class in a batch) and passes the class labels
  as ``labels``, so other items of the same class are not counted as negatives.
* ``'pairs'`` (query, doc): ``anchors`` and ``positives`` (N, D); ``labels`` optionally holds group ids
  (rows sharing a query share a group) so that rows of the same group are never negatives of each other.
* ``'text-image'``: as pairs, the text tower's embeddings as ``anchors`` and the image tower's as
  ``positives``; ``logit_scale`` is the CLIP model's own log-temperature when it has one.
* ``'scored'`` (a, b, score in [0, 1]): ``anchors`` (a), ``positives`` (b) and ``scores`` (N,).
* ``'margin-triplets'``: ``anchors``, ``positives``, ``negatives`` and the teacher's margins as ``scores``.

Embeddings usually arrive L2-normalized, but no loss relies on it: wherever a cosine is meant the loss
normalizes itself. Similarities are computed in at least float32 (never under autocast's half
precision): a temperature of 0.05 turns bfloat16 rounding of cosines into logit noise of ~0.1.

The package, one job a module:

* :mod:`~finetune.losses.inputs` — :class:`LossInputs` and the data kind names (a leaf);
* :mod:`~finetune.losses.base` — :class:`Loss`: checks the inputs once (its ``reads``), gathers negatives
  across processes, reduces; a subclass implements ``compute``;
* :mod:`~finetune.losses.similarity`, :mod:`~finetune.losses.distributed` — cosines and distances in full
  precision; the cross-process gather;
* one module per family: :mod:`~finetune.losses.contrastive` (InfoNCE, CLIPLoss),
  :mod:`~finetune.losses.triplet`, :mod:`~finetune.losses.classification` (NormalizedSoftmax, ArcFace,
  CosFace), :mod:`~finetune.losses.scored` (CoSENT, CosineSimilarity), :mod:`~finetune.losses.margin`
  (MarginMSE), :mod:`~finetune.losses.sigmoid` (SigLIP), :mod:`~finetune.losses.pml` (``PML:<Name>``: any
  loss of pytorch-metric-learning);
* :mod:`~finetune.losses.registry` — names and aliases, :func:`build_loss` (validates ``loss_options``
  against the loss's :attr:`Loss.options` and refuses a loss that does not fit the data kind).

A new loss is one subclass in one file, registered with :func:`register_loss`. A loss that owns parameters
(ArcFace/CosFace class weights, a learnable temperature) exposes them as ordinary parameters; the training
code puts ``loss.parameters()`` in an optimizer group of their own.
"""
from __future__ import annotations

from .base import Loss
from .inputs import DATA_KINDS, LABELED, MARGIN_TRIPLETS, PAIRS, SCORED, TEXT_IMAGE, LossInputs
from .registry import (build_loss, default_loss, loss_class, loss_names, losses_for, register_loss,
                       required_model_options)
from .similarity import cosine_matrix, distance_matrix, rowwise_cosine
from .distributed import gather_across_processes
from .pml import PML_PREFIX
# the built-in losses register themselves when imported, in this order
from .contrastive import (CONTRASTIVE_OPTIONS, MAX_LOGIT_SCALE, CLIPLoss, InfoNCELoss, hard_negatives_contrastive,
                          in_batch_contrastive)
from .triplet import TripletMarginLoss
from .classification import ArcFaceLoss, CosFaceLoss, NormalizedSoftmaxLoss
from .scored import CoSENTLoss, CosineSimilarityLoss
from .margin import MarginMSELoss
from .sigmoid import SigLIPLoss

__all__ = [
    'LossInputs', 'Loss', 'InfoNCELoss', 'CLIPLoss', 'TripletMarginLoss', 'NormalizedSoftmaxLoss', 'ArcFaceLoss',
    'CosFaceLoss', 'CoSENTLoss', 'CosineSimilarityLoss', 'MarginMSELoss', 'SigLIPLoss', 'hard_negatives_contrastive',
    'DATA_KINDS', 'LABELED', 'PAIRS', 'SCORED', 'TEXT_IMAGE', 'MARGIN_TRIPLETS', 'MAX_LOGIT_SCALE', 'PML_PREFIX',
    'CONTRASTIVE_OPTIONS', 'register_loss', 'loss_names', 'loss_class', 'losses_for', 'default_loss', 'build_loss',
    'required_model_options', 'in_batch_contrastive', 'gather_across_processes', 'cosine_matrix', 'rowwise_cosine',
    'distance_matrix',
]
