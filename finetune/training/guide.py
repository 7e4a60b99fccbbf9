"""The guide model of a loss with ``loss_options={'guide': ...}`` (GISTEmbed; see :mod:`finetune.losses.guided`):
built once, its preprocessing run by the DataLoader's collator beside the model's, and each batch embedded by
it without gradients before the loss.

The collator puts the guide's inputs of a batch under ``batch['guide']`` (a batch of the same kind, rows in the
same order); :func:`attach_guide` embeds them on the training device, in the run's autocast (its precision),
and hands the loss ``LossInputs.guide``. A guide given by name is built from the registry
(:func:`finetune.build_model`, pretrained weights, no remote code); one given as a model is used as it is (moved
to the training device). Its weights are never trained and are not part of checkpoints.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from ..backbone import rows_of
from ..errors import OptionError
from ..losses import LossInputs

#: the batch key of the guide's inputs
GUIDE_KEY = 'guide'


def guide_model(loss: nn.Module) -> nn.Module | None:
    """The guide of `loss`, built once (a name through the registry) and in eval mode; None without one."""
    spec = loss.__dict__.get('guide')
    if spec is None:
        return None
    built = loss.__dict__.get('_guide_model')
    if built is None:
        if isinstance(spec, str):
            from ..model import build_model
            built = build_model(spec)
        else:
            built = spec
        built.eval()
        loss.__dict__['_guide_model'] = built
    return built


def guide_preprocessors(loss: nn.Module, data) -> tuple[Callable, Callable | None] | None:
    """``(preprocess of side a, of side b)`` with the guide's own preprocessing (its towers' for a multi-tower
    guide), for the collator; None without a guide. Raises InputError for data the guide cannot embed."""
    model = guide_model(loss)
    if model is None:
        return None
    from ..evaluation.evaluate import side_models
    side_a, side_b = side_models(model, data)
    towers = getattr(model, 'towers', None)
    if towers is not None:  # the tower that embeds each side
        names = {id(tower): name for name, tower in towers.items()}
        loss.__dict__['_guide_towers'] = {side: names[id(m)] for side, m in (('a', side_a), ('b', side_b))
                                          if m is not None}
    return side_a.preprocess, (side_b.preprocess if side_b is not None else None)


def attach_guide(loss: nn.Module, kind, batch: dict, inputs: LossInputs) -> LossInputs:
    """`inputs` with ``guide`` set: the guide's embeddings of ``batch['guide']`` (no gradients; in chunks of
    the loss's ``mini_batch_size`` when it has one). `inputs` as they are for a loss without a guide."""
    model = guide_model(loss)
    if model is None:
        return inputs
    if not isinstance(batch, dict) or GUIDE_KEY not in batch:
        raise OptionError(f"loss_options 'guide': this batch carries no guide inputs (the guide needs the raw "
                          f"rows: it runs where fit's DataLoader preprocesses them; not with a feature cache).")
    guided = batch[GUIDE_KEY]
    device = _device(inputs)
    if next(model.parameters()).device != device:
        model.to(device)
    towers = loss.__dict__.get('_guide_towers', {})
    size = getattr(loss, 'mini_batch_size', None)

    def embed(side: str, x: Any, logits: bool = False):
        tower = towers.get(side)
        run = (lambda part: model(part, tower=tower)) if tower is not None else model
        with torch.no_grad():
            n = rows_of(x)
            if not size or n <= size:
                return run(x)
            backbone = (model.towers[tower] if tower is not None else model).backbone
            return torch.cat([run(backbone.slice_batch(x, i, min(n, i + size))) for i in range(0, n, size)])
    return dataclasses.replace(inputs, guide=kind.loss_inputs(embed, guided, loss))


def _device(inputs: LossInputs) -> torch.device:
    for field in ('anchors', 'positives', 'embeddings'):
        value = getattr(inputs, field)
        if value is not None:
            return value.device
    return torch.device('cpu')
