"""Poolers: turn unpooled features into one vector per input.

Every pooler accepts both layouts a backbone can hand over:

* image maps ``(N, C, H, W)``, pooled over ``H, W``;
* token sequences ``(N, L, C)`` with an optional ``mask`` ``(N, L)`` (1 = real token, 0 = padding),
  pooled over the real tokens only, so padding never leaks into an embedding.

Poolers are registered by name (case-insensitive): ``GeM``, ``avg`` (alias ``mean``), ``max``, ``cls``, ``last``.
A third party adds one with :func:`register_pooler`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import OptionError, did_you_mean
from .options import Option, boolean, positive_float, validate_mapping

MAP, TOKENS = 'map', 'tokens'


def _check_layout(x: torch.Tensor) -> str:
    if x.dim() == 4:
        return MAP
    if x.dim() == 3:
        return TOKENS
    raise ValueError(f'a pooler takes (N, C, H, W) maps or (N, L, C) tokens, got shape {tuple(x.shape)}')


def _token_weights(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(x.shape[:2] + (1,), dtype=x.dtype, device=x.device)
    return mask.to(dtype=x.dtype).unsqueeze(-1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if _check_layout(x) == MAP:
        return x.mean(dim=(2, 3))
    w = _token_weights(x, mask)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp(min=1e-9)


class Pooler(nn.Module):
    """Base class: ``forward(x, mask=None) -> (N, C)``."""

    #: registry name, filled in by :func:`register_pooler`
    name: str = ''
    #: layouts this pooler understands
    layouts: tuple[str, ...] = (MAP, TOKENS)
    #: the keys of ``pooler_options``
    options: tuple[Option, ...] = ()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class MeanPooler(Pooler):
    """Average over spatial positions, or over the real (unmasked) tokens."""

    def forward(self, x, mask=None):
        return _masked_mean(x, mask)


class MaxPooler(Pooler):
    """Maximum over spatial positions, or over the real tokens (padding set to -inf first)."""

    def forward(self, x, mask=None):
        if _check_layout(x) == MAP:
            return x.amax(dim=(2, 3))
        if mask is not None:
            x = x.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(x.dtype).min)
        return x.amax(dim=1)


class ClsPooler(Pooler):
    """The first token of the sequence (BERT's ``[CLS]``, ViT's class token)."""

    layouts = (TOKENS,)

    def forward(self, x, mask=None):
        if _check_layout(x) != TOKENS:
            raise ValueError('the cls pooler needs a token sequence (N, L, C)')
        return x[:, 0]


def last_token(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The last real token of each row of `x` ``(N, L, C)``: the last position whose `mask` is 1 (the last
    position itself with padding on the left, the token before the padding with padding on the right), the last
    position when `mask` is None; ``(N, C)``. A row with no real token gives its first position."""
    if mask is None:
        return x[:, -1]
    positions = torch.arange(x.shape[1], device=x.device).expand(mask.shape)
    last = torch.where(mask.bool(), positions, torch.zeros_like(positions)).amax(dim=1)
    return x[torch.arange(x.shape[0], device=x.device), last]


class LastPooler(Pooler):
    """The last real (unmasked) token of the sequence: a decoder's (LLM's) embedding, whose last token is the
    only one that has seen the whole text; padding on either side."""

    layouts = (TOKENS,)

    def forward(self, x, mask=None):
        if _check_layout(x) != TOKENS:
            raise ValueError('the last pooler needs a token sequence (N, L, C)')
        return last_token(x, mask)


class GeMPooler(Pooler):
    """Generalized mean pooling (Radenović et al.): ``mean(clamp(x, eps) ** p) ** (1 / p)``.

    ``p = 1`` is average pooling; as ``p`` grows it approaches max pooling. ``p`` is learned unless
    ``learnable=False``. Inputs are clamped at ``eps`` because fractional powers need positive values.
    """

    options = (
        Option('p', 'float > 0', 3.0, 'the exponent; 1 = average pooling, large = max pooling', positive_float),
        Option('eps', 'float > 0', 1e-6, 'inputs are clamped to at least eps before the power', positive_float),
        Option('learnable', 'bool', True, 'learn p during training', boolean),
    )

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)
        self.eps = eps

    def forward(self, x, mask=None):
        # powers in at least fp32: x ** 3 overflows or loses everything in half precision
        compute = torch.promote_types(x.dtype, torch.float32)
        p = self.p.to(compute)
        layout = _check_layout(x)
        clamped = x.to(compute).clamp(min=self.eps)
        if layout == TOKENS and mask is not None:  # padding can neither overflow nor set the peak
            clamped = clamped.masked_fill(~mask.bool().unsqueeze(-1), self.eps)
        # GeM is homogeneous: GeM(x) = c * GeM(x / c) for any c > 0. Dividing by the per-channel peak keeps
        # x ** p from overflowing (large x, large p) or underflowing to 0 (x ~ eps), which gave inf outputs
        # and NaN gradients. c is a constant of the formula, hence detached.
        peak = clamped.amax(dim=(2, 3) if layout == MAP else 1, keepdim=True).detach()
        mean = _masked_mean((clamped / peak).pow(p), mask).clamp(min=torch.finfo(compute).tiny)
        return (mean.pow(1.0 / p) * peak.flatten(1)).to(x.dtype)

    def extra_repr(self) -> str:
        return f'p={self.p.item():.4g}, eps={self.eps}'


_POOLERS: dict[str, type[Pooler]] = {}  # lower-cased name or alias -> class
_CANONICAL: dict[str, str] = {}  # lower-cased name or alias -> name as registered
_SPELLINGS: list[str] = []  # names and aliases as registered, for messages


def register_pooler(name: str, cls: type[Pooler], aliases: tuple[str, ...] = ()) -> None:
    """Register a :class:`Pooler` subclass under `name` (and `aliases`); names are case-insensitive."""
    for key in (name, *aliases):
        if key.lower() in _POOLERS and _POOLERS[key.lower()] is not cls:
            raise OptionError(f'a pooler named {key!r} is already registered')
        _POOLERS[key.lower()] = cls
        _CANONICAL[key.lower()] = name
        if key not in _SPELLINGS:
            _SPELLINGS.append(key)
    cls.name = name


register_pooler('GeM', GeMPooler)
register_pooler('avg', MeanPooler, aliases=('mean',))
register_pooler('max', MaxPooler)
register_pooler('cls', ClsPooler)
register_pooler('last', LastPooler)


def pooler_names() -> list[str]:
    """The registered pooler names and aliases as users type them."""
    return list(_SPELLINGS)


def canonical_pooler_name(name: Any, option: str = 'pooler') -> str:
    """The registered spelling of a pooler name; raises OptionError for an unknown one."""
    if not isinstance(name, str):
        raise OptionError(f'option {option!r}: expected a pooler name ({", ".join(map(repr, pooler_names()))}) '
                          f'or None, got {name!r} ({type(name).__name__}).')
    key = name.lower()
    if key not in _POOLERS:
        raise OptionError(f'option {option!r}: unknown pooler {name!r}.{did_you_mean(name, pooler_names())} '
                          f'Available poolers: {", ".join(map(repr, pooler_names()))}, or None for the '
                          f"model's own pooling.")
    return _CANONICAL[key]


def pooler_class(name: str) -> type[Pooler]:
    return _POOLERS[canonical_pooler_name(name).lower()]


def validate_pooler_options(name: str, options: dict | None) -> dict[str, Any]:
    """Fill in and check ``pooler_options`` for the pooler called `name`."""
    cls = pooler_class(name)
    return validate_mapping(f'pooler_options for pooler {cls.name!r}', options, cls.options)


def build_pooler(name: str, options: dict | None = None) -> Pooler:
    """Instantiate the pooler `name` with validated `options`."""
    cls = pooler_class(name)
    return cls(**validate_pooler_options(name, options))
