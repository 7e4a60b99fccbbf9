"""Training a tower by depth: ``unlocked_layers`` (only the last N blocks train) and ``layer_decay`` (each block's
learning rate decayed from the top), as open_clip's locked towers and BEiT / timm's layer-wise decay do.

Both read a backbone's :meth:`~finetune.backbone.Backbone.depth_layers`: its parameters by depth, input to output, each
entry the parameter-name prefixes of one layer. A family with transformer blocks (ViT and text towers of CLIP
models, timm ViTs) lists ``[stem, block 1, ..., block L]`` with the final norm and projection joined to the last
block (open_clip's grouping); others fall back to :meth:`~finetune.backbone.Backbone.layer_groups`.

* ``model_options={'unlocked_layers': N}``: in every tower, the parameters of the last N layers train and the
  others are frozen; ``{'unlocked_layers': {'image': 2, 'text': 4}}`` per tower (a tower not named trains whole).
  0 freezes the tower's backbone (heads added on top still train).
* ``model_options={'patch_dropout': 0.5}`` (ViT towers of the families that declare it): in training only, each
  image keeps a random half of its patch tokens (Li et al., 2023, FLIP: faster steps, and a regularizer);
  :class:`PatchDropout` is the module a family puts where its ViT has the token sequence.
* ``model_options={'layer_decay': 0.75}``: layer k of L (from 0 at the input) trains at
  ``learning_rate * 0.75 ** (L - 1 - k)``; the last layer, and what sits above the backbone (poolers, heads),
  at the learning rate itself. A model option, so that it travels with the model it describes; ``fit`` reads
  it when it makes the optimizer's groups.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from .errors import OptionError
from .options import Option
from .validators import is_number


def unlocked_layers_option(name: str, value: Any) -> int | dict[str, int] | None:
    """None, an int >= 0, or ``{tower: int >= 0}``; OptionError otherwise."""
    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0
    if value is None or count(value):
        return value
    if isinstance(value, Mapping) and value and all(isinstance(k, str) and count(v) for k, v in value.items()):
        return dict(value)
    raise OptionError(f'option {name!r}: expected None, a number of blocks >= 0 (e.g. 2) or one per tower '
                      f"(e.g. {{'image': 2, 'text': 4}}), got {value!r}.")


def layer_decay_option(name: str, value: Any) -> float | None:
    """None or a number in (0, 1]; OptionError otherwise."""
    if value is None or (is_number(value) and 0 < value <= 1):
        return None if value is None else float(value)
    raise OptionError(f'option {name!r}: expected None or a factor in (0, 1] such as 0.75 (each block down from '
                      f'the top trains at that share of the learning rate of the block above), got {value!r}.')


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix.rstrip('.') + '.')


def layer_index(backbone: nn.Module) -> tuple[dict[str, int], int]:
    """``({parameter name: layer}, number of layers)`` of `backbone` by its :meth:`layers`; a parameter under none
    of them takes the layer of the parameter before it (0 for the first)."""
    layers = backbone.depth_layers()
    index: dict[str, int] = {}
    last = 0
    for name, _ in backbone.named_parameters():
        found = next((k for k, prefixes in enumerate(layers) if any(_under(name, p) for p in prefixes)), None)
        last = found if found is not None else last
        index[name] = last
    return index, len(layers)


def block_layers(names: Iterable[str], blocks: Sequence[str], stem: Sequence[str]) -> list[tuple[str, ...]]:
    """``[stem, block 1, ..., block L + the rest]``: for a family whose transformer blocks are under the `blocks`
    prefixes (in order) and whose embeddings are under the `stem` prefixes; every other parameter of `names`
    (final norms, projections) joins the last block, as open_clip groups a tower it locks."""
    names = list(names)
    stem_names = tuple(n for n in names if any(_under(n, p) for p in stem))
    rest = tuple(n for n in names if n not in stem_names and not any(_under(n, b) for b in blocks))
    if not blocks:
        return [stem_names + rest]
    return [stem_names, *[(b,) for b in blocks[:-1]], (blocks[-1], *rest)]


def model_backbones(model: nn.Module) -> dict[str | None, nn.Module]:
    """``{tower: backbone}`` of a multi-tower model, ``{None: backbone}`` of a one-tower one."""
    towers = getattr(model, 'towers', None)
    if towers is not None:
        return {name: tower.backbone for name, tower in towers.items()}
    return {None: model.backbone}


def apply_unlocked_layers(backbones: Mapping[str | None, nn.Module], value: int | dict[str, int] | None,
                          model: str) -> None:
    """Freeze all but the last N layers of each backbone (``{tower: backbone}``, None for a one-tower model),
    as `value` says. Raises OptionError for a tower that is not there or more layers than a backbone has."""
    if value is None:
        return
    if isinstance(value, dict):
        towers = [t for t in backbones if t is not None]
        unknown = [t for t in value if t not in backbones]
        if not towers or unknown:
            have = f'towers {", ".join(map(repr, towers))}' if towers else 'one tower (give a number)'
            raise OptionError(f"option 'unlocked_layers' for {model!r}: no tower {unknown[0] if unknown else ''!r}; "
                              f'the model has {have}.')
        wanted = dict(value)
    else:
        wanted = {t: value for t in backbones}
    for tower, n in wanted.items():
        backbone = backbones[tower]
        index, count = layer_index(backbone)
        if n > count:
            where = f'{model}[{tower}]' if tower else model
            raise OptionError(f"option 'unlocked_layers' for {where!r}: {n} but its backbone has {count} layers "
                              f'(blocks); expected 0 to {count}.')
        for name, p in backbone.named_parameters():
            if index[name] < count - n:
                p.requires_grad_(False)


def layer_decay_groups(model: nn.Module, params: list[nn.Parameter], learning_rate: float,
                       decay: float) -> list[dict]:
    """`params` (the model's trained ones) as optimizer groups, one per learning rate: a backbone parameter of
    layer k of L at ``learning_rate * decay ** (L - 1 - k)``, others at `learning_rate`; the group at the full
    rate first."""
    rate_of: dict[int, float] = {}
    for backbone in model_backbones(model).values():
        index, count = layer_index(backbone)
        for name, p in backbone.named_parameters():
            rate_of.setdefault(id(p), learning_rate * decay ** (count - 1 - index[name]))
    by_rate: dict[float, list[nn.Parameter]] = {}
    for p in params:
        by_rate.setdefault(rate_of.get(id(p), learning_rate), []).append(p)
    return [{'params': by_rate[rate], 'lr': rate} for rate in sorted(by_rate, reverse=True)]


#: the core model options of this module
LAYER_OPTIONS = (
    Option('unlocked_layers', 'int | dict | None', None,
           "train only the last N blocks of each tower's backbone (the rest frozen); {'image': 2, 'text': 4} per "
           'tower', unlocked_layers_option),
    Option('layer_decay', 'float | None', None,
           'layer-wise learning-rate decay: block k of L trains at learning_rate * layer_decay ** (L - 1 - k)',
           layer_decay_option),
)


class PatchDropout(nn.Module):
    """In training, keep a random ``1 - p`` share of the tokens of an ``(N, L, C)`` sequence (each row its own
    draw, in their order), the first `keep_first` tokens (class and register tokens) always; in eval mode, the
    sequence as it is. No parameters: a model's weights and state_dict do not change with it."""

    def __init__(self, p: float, keep_first: int = 1):
        super().__init__()
        self.p, self.keep_first = float(p), int(keep_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0:
            return x
        head, tokens = x[:, :self.keep_first], x[:, self.keep_first:]
        n, length = tokens.shape[:2]
        keep = max(1, int(length * (1 - self.p)))
        scores = torch.rand(n, length, device=x.device)
        kept = scores.topk(keep, dim=1).indices.sort(dim=1).values
        tokens = tokens.gather(1, kept[..., None].expand(-1, -1, tokens.shape[-1]))
        return torch.cat([head, tokens], dim=1)

    def extra_repr(self) -> str:
        return f'p={self.p}, keep_first={self.keep_first}'


def patch_dropout_option(name: str, value: Any) -> float:
    """A share in [0, 1); OptionError otherwise."""
    if is_number(value) and 0 <= value < 1:
        return float(value)
    raise OptionError(f'option {name!r}: expected a share of patch tokens to drop in training, in [0, 1) (0.5 '
                      f'as FLIP; 0: off), got {value!r}.')


#: the option a family with ViT towers declares (its builder puts :class:`PatchDropout` in the ViT)
PATCH_DROPOUT_OPTION = Option(
    'patch_dropout', 'float', 0.0, 'ViT towers: the share of patch tokens dropped at random in training (FLIP: '
    '0.5); 0 keeps them all', patch_dropout_option)
