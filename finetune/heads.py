"""Heads: what sits between the pooled features and the embedding.

* :class:`ProjectionHead` maps pooled features to ``output_dim`` (one ``Linear``, or a small MLP when
  ``head_options['hidden_dims']`` is given). It is added whenever ``output_dim`` is set.
* :class:`CosineClassifier` is recognite's normalized classifier: bias-free, its weight rows and the
  embeddings L2-normalized, so its logits are cosine similarities (times ``scale``). It trains the
  embedding through softmax cross-entropy; it is never part of the embedding itself, so in eval mode
  (and whenever logits are not asked for) the model returns the normalized embedding alone.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .errors import OptionError
from .functional import l2_normalize
from .options import Option, fraction, int_list, one_of, positive_float, positive_int, validate_mapping

PROJECTION = 'projection'
COSINE_CLASSIFIER = 'cosine_classifier'
HEADS = (PROJECTION, COSINE_CLASSIFIER)

_ACTIVATIONS = {'relu': nn.ReLU, 'gelu': nn.GELU, 'tanh': nn.Tanh, 'silu': nn.SiLU}

PROJECTION_OPTIONS = (
    Option('hidden_dims', 'list[int]', (), 'hidden layer sizes of an MLP projection; [] = one Linear layer',
           int_list),
    Option('activation', 'str', 'relu', 'activation between MLP layers: ' + ', '.join(_ACTIVATIONS),
           one_of(tuple(_ACTIVATIONS))),
    Option('dropout', 'float in [0, 1)', 0.0, 'dropout before each Linear layer of the projection', fraction),
)
CLASSIFIER_OPTIONS = (
    Option('num_classes', 'int > 0', None, 'classes of the cosine classifier (required for that head)',
           positive_int(allow_none=True)),
    Option('scale', 'float > 0', 16.0, 'logits = scale * cosine similarity (recognite uses 1)', positive_float),
)


def validate_head_options(head: str | None, output_dim: int | None, options: dict | None) -> dict[str, Any]:
    """Check ``head_options`` against the heads that `head` and `output_dim` switch on."""
    schema: list[Option] = []
    if output_dim is not None:
        schema += PROJECTION_OPTIONS
    if head == COSINE_CLASSIFIER:
        schema += CLASSIFIER_OPTIONS
    what = 'head_options' + ('' if schema else " (no head is active: set 'output_dim' or 'head')")
    return validate_mapping(what, options, schema)


class ProjectionHead(nn.Module):
    """``Linear`` (or ``Linear -> act -> ... -> Linear``) from `in_dim` to `out_dim`."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dims: tuple[int, ...] = (),
                 activation: str = 'relu', dropout: float = 0.0):
        super().__init__()
        dims = [in_dim, *hidden_dims, out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            if dropout:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(_ACTIVATIONS[activation]())
        self.layers = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class CosineClassifier(nn.Module):
    """Bias-free classifier whose logits are ``scale * cos(embedding, class weight row)``."""

    def __init__(self, in_dim: int, num_classes: int, scale: float = 16.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        nn.init.normal_(self.weight, std=in_dim ** -0.5)
        self.scale = scale

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.scale * l2_normalize(embeddings, dim=-1) @ l2_normalize(self.weight, dim=-1).t()

    def extra_repr(self) -> str:
        return f'in_dim={self.weight.shape[1]}, num_classes={self.weight.shape[0]}, scale={self.scale}'


def ensure_cosine_classifier(model, num_classes: int, log: Callable[[str], None]) -> None:
    """Give `model` a cosine classifier of `num_classes` rows (recognite's recipe) if it lacks one."""
    if getattr(model, 'towers', None) is not None:  # a multi-tower model
        raise OptionError('this loss trains through a classifier head, which a multi-tower model has not; use an '
                          'in-batch contrastive loss (CLIPLoss or InfoNCE).')
    current = model.classifier
    if current is not None and current.weight.shape[0] == num_classes:
        return
    model.classifier = CosineClassifier(model.output_dim, num_classes,
                                        scale=model.options['head_options'].get('scale', 16.0))
    model.options = dict(model.options, head=COSINE_CLASSIFIER,
                         head_options=dict(model.options['head_options'], num_classes=num_classes,
                                           scale=model.classifier.scale))
    log(f'added a cosine classifier head with {num_classes} classes for the loss')
