"""The module a training step runs: model + loss in one ``nn.Module``, so that one forward computes the loss
(what DistributedDataParallel wraps)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..backbone import Features, batch_to, inverse_order, join_features, rows_of
from ..data.kinds import DataKind
from ..data.several import DATASET_KEY
from ..losses import Loss


def _first(x):
    return x[0] if isinstance(x, tuple) else x


class TrainingModule(nn.Module):
    """``module(batch)`` -> the loss of `batch`, whose layout the data `kind` knows.

    `towers` names the tower that embeds each side (``{'a': 'text', 'b': 'image'}``) for a multi-tower model;
    empty for a one-tower model. Several datasets (:mod:`finetune.data.several`): `kind` answers for the dataset of
    each batch, the loss holds one loss per dataset, and `towers` is a list, one mapping per dataset.

    :attr:`host_batch` is the batch of the next forward as it was before it moved to an accelerator (the trainer
    sets it each step; None on a CPU): the length groups of its sides are then found and cut there, and only the
    groups move, so that no step waits for the accelerator to read back row lengths or padding."""

    def __init__(self, model: nn.Module, loss: Loss, kind: DataKind,
                 towers: dict[str, str] | list[dict[str, str]] | None = None):
        super().__init__()
        self.model, self.loss, self.kind = model, loss, kind
        self.tower_sets = list(towers) if isinstance(towers, list) else None  # per dataset
        self.towers = {} if self.tower_sets is not None else dict(towers or {})
        self.host_batch: dict[str, Any] | None = None
        self._hosts: dict[int, Any] = {}  # id of a side's input in this forward -> that input on the host

    def embed(self, side: str, x: Any, logits: bool = False, host: Any = None):
        """The embeddings (and, with `logits`, the classifier head's logits) of one side of a batch. In training,
        a backbone with row lengths embeds its :meth:`~finetune.backbone.Backbone.length_groups` (rows of similar
        length, less padding) apart, and the results are put back in row order. `host` is `x` on the host (found
        from :attr:`host_batch` when not given): the groups are then cut there and moved."""
        host = self._hosts.get(id(x)) if host is None else host
        groups = None
        if self.training:
            groups = self._backbone(side).length_groups(x if host is None else host)
        if not groups:
            return self._embed(side, x, logits)
        if host is not None:
            device = _device_of(x)
            groups = [(index, batch_to(group, device)) for index, group in groups]
        parts = [self._embed(side, group, logits) for _, group in groups]
        inverse = batch_to(inverse_order(torch.cat([index for index, _ in groups])), _first(parts[0]).device)
        if isinstance(parts[0], tuple):  # (embeddings, logits)
            return tuple(torch.cat(column)[inverse] for column in zip(*parts))
        return torch.cat(parts)[inverse]

    def _embed(self, side: str, x: Any, logits: bool):
        tower = self.towers.get(side)
        if tower is not None:
            return self.model(x, tower=tower, return_logits=logits)
        return self.model(x, return_logits=logits)

    def row_lengths(self, side: str, x: Any):
        """The length of each row of one side's padded sequences (see
        :meth:`~finetune.backbone.Backbone.row_lengths`), or None."""
        return self._backbone(side).row_lengths(x)

    def _backbone(self, side: str):
        tower = self.towers.get(side)
        return (self.model.towers[tower] if tower is not None else self.model).backbone

    def slice(self, side: str, x: Any, start: int, stop: int) -> Any:
        """Rows ``start:stop`` of one side's model input, cut by the backbone that embeds that side."""
        return self._backbone(side).slice_batch(x, start, stop)

    def joined(self, batch: dict[str, Any]):
        """In training, when one backbone embeds several inputs of `batch` (queries and documents of a one-tower
        model) and can join them (:meth:`~finetune.backbone.Backbone.join_batches`): an ``embed`` that gives
        each of them its rows of the joined batch's embeddings, embedded once (in length groups: fewer,
        larger passes). Else None."""
        kind = self.kind.for_batch(batch) if hasattr(self.kind, 'for_batch') else self.kind
        wanted = [(side, batch[key]) for side, key in kind.embedded if key in batch]
        if not self.training or len(wanted) < 2 or len({self.towers.get(side) for side, _ in wanted}) > 1:
            return None
        side, backbone, inputs = wanted[0][0], self._backbone(wanted[0][0]), [x for _, x in wanted]
        hosts = [self._hosts.get(id(x)) for x in inputs]
        host = None
        if all(isinstance(x, Features) for x in inputs):  # a frozen backbone's cached outputs
            joined = join_features(inputs) if backbone.joins_batches() else None
        elif all(h is not None for h in hosts):  # joined on the host, then moved
            host = backbone.join_batches(hosts)
            joined = None if host is None else batch_to(host, _device_of(inputs[0]))
        else:
            joined = backbone.join_batches(inputs)
        if joined is None:
            return None
        parts = self.embed(side, joined, host=host).split([rows_of(x) for _, x in wanted])
        found = {id(x): part for (_, x), part in zip(wanted, parts)}

        def embed(side: str, x: Any, logits: bool = False):
            part = None if logits else found.get(id(x))
            return part if part is not None else self.embed(side, x, logits)
        return embed

    def with_guide(self, batch: dict[str, Any], inputs):
        """`inputs` with a guide's embeddings of `batch` for a loss that has a guide (see
        :mod:`finetune.training.guide`); as they are otherwise."""
        if self.loss.__dict__.get('guide') is None:
            return inputs
        from .guide import attach_guide
        return attach_guide(self.loss, self.kind, batch, inputs)

    def hosts_of(self, batch: dict[str, Any]) -> dict[int, Any]:
        """``{id(batch[key]): host_batch[key]}``: each input of `batch` (as this forward received it) with its
        copy on the host, for the keys :attr:`host_batch` has."""
        host = self.host_batch
        if not isinstance(host, dict) or not isinstance(batch, dict):
            return {}
        return {id(value): host[key] for key, value in batch.items() if key in host}

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        self._hosts = self.hosts_of(batch) if self.training else {}
        if self.tower_sets is not None:  # several datasets: the towers of this batch's dataset
            self.towers = self.tower_sets[int(batch[DATASET_KEY])]
        try:
            embed = self.joined(batch) or self.embed
            inputs = self.kind.loss_inputs(embed, batch, self.loss, getattr(self.model, 'logit_scale', None))
            return self.loss(self.with_guide(batch, inputs))
        finally:
            self._hosts = {}


def _device_of(x: Any) -> torch.device | None:
    """The device of the first tensor in a model input (a tensor, Features, or a dict / list / tuple of them),
    or None where it holds none."""
    if isinstance(x, torch.Tensor):
        return x.device
    if isinstance(x, Features):
        return x.tensor.device
    values = x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple)) else ()
    for value in values:
        device = _device_of(value)
        if device is not None:
            return device
    return None
