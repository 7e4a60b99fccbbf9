"""The module a training step runs: model + loss in one ``nn.Module``, so that one forward computes the loss
(what DistributedDataParallel wraps)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data.kinds import DataKind
from ..losses import Loss


class TrainingModule(nn.Module):
    """``module(batch)`` -> the loss of `batch`, whose layout the data `kind` knows.

    `towers` names the tower that embeds each side (``{'a': 'text', 'b': 'image'}``) for a multi-tower model;
    empty for a one-tower model."""

    def __init__(self, model: nn.Module, loss: Loss, kind: DataKind, towers: dict[str, str] | None = None):
        super().__init__()
        self.model, self.loss, self.kind = model, loss, kind
        self.towers = dict(towers or {})

    def embed(self, side: str, x: Any, logits: bool = False):
        """The embeddings (and, with `logits`, the classifier head's logits) of one side of a batch."""
        tower = self.towers.get(side)
        if tower is not None:
            return self.model(x, tower=tower, return_logits=logits)
        return self.model(x, return_logits=logits)

    def slice(self, side: str, x: Any, start: int, stop: int) -> Any:
        """Rows ``start:stop`` of one side's model input, cut by the backbone that embeds that side."""
        tower = self.towers.get(side)
        model = self.model.towers[tower] if tower is not None else self.model
        return model.backbone.slice_batch(x, start, stop)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        inputs = self.kind.loss_inputs(self.embed, batch, self.loss, getattr(self.model, 'logit_scale', None))
        return self.loss(inputs)
