"""Cross-encoders: models that read a (query, document) pair together and give it one relevance score.

They are a model type of their own, registered by plugins exactly as backbones are: a plugin exposes a
:class:`~finetune.registry.BackbonePlugin` through the entry-point group ``finetune.cross_encoders`` whose
specs (task ``'cross-encoding'``) build a :class:`CrossEncoder`. ``finetune models`` and
:func:`finetune.describe_models` list them under that task. :func:`finetune.synthesize` uses one as the
teacher that scores mined pairs.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .errors import InputError, OptionError, UnknownModelError
from .options import Option, pretrained, validate_mapping
from .registry import CROSS_ENCODER_TASK, CROSS_ENCODERS, REGISTRY, BackboneSpec


class CrossEncoder(nn.Module):
    """Base class: :meth:`score_batch` scores one batch of pairs; :meth:`score` all of them, in batches.

    A subclass sets ``name`` and implements ``score_batch(queries, documents) -> Tensor (N,)``: higher means
    more relevant. Scores are compared with each other (the best candidate of a query, margins between two
    candidates), so one model must always give them on one scale."""

    name: str = ''

    def score_batch(self, queries: Sequence[str], documents: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device('cpu')

    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32,
              on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """The score of every ``(query, document)`` pair, float32 ``(len(pairs),)``; pairs of similar length
        share a batch. `on_batch(n)` is called after each batch of n pairs (a progress bar)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise InputError(f'batch_size: expected a positive integer, got {batch_size!r}.')
        pairs = list(pairs)
        bad = next((i for i, p in enumerate(pairs) if not (isinstance(p, (tuple, list)) and len(p) == 2
                                                            and all(isinstance(x, str) for x in p))), None)
        if bad is not None:
            raise InputError(f'{self.name}: pair {bad} is {pairs[bad]!r}; expected a (query, document) pair of '
                             f'strings.')
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        out = np.empty(len(pairs), dtype=np.float32)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    rows = order[start:start + batch_size]
                    scores = self.score_batch([pairs[i][0] for i in rows], [pairs[i][1] for i in rows])
                    out[rows] = scores.float().cpu().numpy().reshape(-1)
                    if on_batch is not None:
                        on_batch(len(rows))
        finally:
            self.train(was_training)
        return out


#: the options every cross-encoder takes, beside its family's own
COMMON_OPTIONS = (
    Option('pretrained', 'bool | path', True, 'the published weights (True), random weights (False, for tests) or '
           'a local weights file', pretrained),
)


def cross_encoder_options(spec: BackboneSpec, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """`options` checked against the spec's options (its own, then the common ones), defaults filled in."""
    own = {o.name for o in spec.options}
    schema = tuple(spec.options) + tuple(o for o in COMMON_OPTIONS if o.name not in own)
    merged = {**dict(spec.defaults), **dict(options or {})}
    return validate_mapping(f'options of cross-encoder {spec.name!r}', merged, schema)


def cross_encoder_spec(name: str) -> BackboneSpec:
    """The registered cross-encoder `name` (a named one or a prefixed one such as ``hf:<folder>``).

    Raises UnknownModelError with the closest names, and says so when `name` is a backbone instead."""
    if not isinstance(name, str) or not name:
        raise UnknownModelError(f"cross_encoder: expected a cross-encoder name such as 'crossencoder-base-en' "
                                f'(see `finetune models --task {CROSS_ENCODER_TASK}`), got {name!r}.')
    if REGISTRY.is_named(name) and not CROSS_ENCODERS.is_named(name):
        raise UnknownModelError(f'cross_encoder: {name!r} is an embedding model (a backbone), not a cross-encoder: it '
                                f'embeds texts one at a time and scores no pair. Cross-encoders: '
                                f'{", ".join(CROSS_ENCODERS.names()) or "none installed"}{_prefixes()}. Pass '
                                f'{name!r} as the relation miner instead.')
    return CROSS_ENCODERS.get(name)


def _prefixes() -> str:
    found = [f'{p}:<name>' for plugin in CROSS_ENCODERS.plugins.values() for p in plugin.prefixes]
    return f', or by prefix: {", ".join(found)}' if found else ''


def build_cross_encoder(name: str | CrossEncoder, options: Mapping[str, Any] | None = None) -> CrossEncoder:
    """A :class:`CrossEncoder` from a registered name (``'crossencoder-base-en'``, ``'hf:/path/to/folder'``) with
    `options` validated, or `name` itself when it is one already.

    Raises UnknownModelError (an unknown name, or an embedding model's), OptionError, WeightsNotFoundError."""
    if isinstance(name, CrossEncoder):
        if options:
            raise OptionError('cross-encoder options: the cross-encoder is already built; pass its name instead.')
        return name
    if isinstance(name, nn.Module):
        raise UnknownModelError(f'cross_encoder: a {type(name).__name__} is no finetune.cross_encoders.CrossEncoder '
                                f'(an embedding model cannot score pairs); pass a cross-encoder name.')
    spec = cross_encoder_spec(name)
    model = spec.build(cross_encoder_options(spec, options))
    if not isinstance(model, CrossEncoder):
        raise OptionError(f'plugin {spec.plugin!r} built a {type(model).__name__} for {spec.name!r}; expected a '
                          f'finetune.cross_encoders.CrossEncoder.')
    return model


class EmbeddingScorer(CrossEncoder):
    """A stand-in teacher: an embedding model scoring a pair by the cosine of its two embeddings.

    Not a cross-encoder (the texts never see each other), so it is only as good a judge as that bi-encoder;
    useful where no cross-encoder weights are on the machine but a stronger (or differently trained) embedding
    model is. `model` is a finetune model (or a registry name, built)."""

    def __init__(self, model: Any):
        super().__init__()
        if isinstance(model, str):
            from .model import build_model
            model = build_model(model)
        self.embedder = model
        self.name = f'embedding scorer ({getattr(model, "name", type(model).__name__)})'

    def score_batch(self, queries: Sequence[str], documents: Sequence[str]) -> torch.Tensor:
        a = self.embedder.encode(list(queries), batch_size=len(queries), convert_to='torch')
        b = self.embedder.encode(list(documents), batch_size=len(documents), convert_to='torch')
        return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1)
