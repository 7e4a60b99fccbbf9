"""EmbeddingModel = backbone -> pooler -> optional projection -> L2 normalization (+ training-only classifier).

:func:`build_model` turns a registry name and ``model_options`` into one.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import os

import numpy as np
import torch
from torch import nn

from .backbone import Backbone, Features, Towers, batch_to
from .functional import l2_normalize
from .errors import InputError, OptionError, did_you_mean
from .modalities import array_items, is_one_item  # noqa: F401 (plugins import is_one_item from here)
from .heads import (COSINE_CLASSIFIER, HEADS, PROJECTION, CosineClassifier, ProjectionHead,
                    validate_head_options)
from .adapters import attach_lora, lora_option
from .layers import LAYER_OPTIONS, apply_unlocked_layers, model_backbones
from .options import (Option, boolean, freeze, mapping, one_of, positive_int, pretrained,
                      validate_mapping)
from .prompts import check_prompt_options, resolve_prompt
from .poolers import Pooler, build_pooler, canonical_pooler_name, pooler_class, pooler_names, \
    validate_pooler_options
from .registry import REGISTRY, BackboneSpec


def _pooler_option(name: str, value: Any) -> str | None:
    return None if value is None else canonical_pooler_name(value, name)


CORE_OPTIONS: tuple[Option, ...] = (
    Option('pretrained', 'bool | path', True,
           "True: the family's default pretrained weights; False: random init; or a local weights file",
           pretrained),
    Option('pooler', 'str | None', None,
           "None keeps the model's own pooling; or one of " + ', '.join(pooler_names()), _pooler_option),
    Option('pooler_options', 'dict', {}, "options of the pooler, e.g. {'p': 3.0, 'eps': 1e-6} for GeM",
           mapping),
    Option('output_dim', 'int | None', None, 'adds a projection head to this many dimensions',
           positive_int(allow_none=True)),
    Option('head', 'str | None', None,
           f"{PROJECTION!r} (implied by output_dim) or {COSINE_CLASSIFIER!r} (recognite's normalized "
           f"classifier, used in training only)", one_of(HEADS, allow_none=True)),
    Option('head_options', 'dict', {},
           "projection: hidden_dims, activation, dropout; cosine_classifier: num_classes, scale", mapping),
    Option('freeze', 'bool | list[str]', False,
           'True freezes the whole backbone; a list freezes the backbone parameters under those prefixes',
           freeze),
    Option('normalize', 'bool', True, 'L2-normalize the embeddings', boolean),
    Option('preprocess_options', 'dict', {}, 'how raw items become model inputs (per family)', mapping),
    Option('lora', 'bool | dict', False,
           "LoRA adapters: True (the family's targets, r 16, alpha 32, dropout 0.05) or {'r', 'alpha', 'dropout', "
           "'target_modules'}; the backbone's own weights are frozen", lora_option),
    Option('gradient_checkpointing', 'bool', False,
           'recompute activations in the backward pass: less memory, more compute, same gradients', boolean),
    *LAYER_OPTIONS,
)


def option_schema(spec: BackboneSpec) -> list[Option]:
    """Every option `spec` accepts, with the spec's own defaults applied."""
    from dataclasses import replace
    schema = [replace(o, default=spec.defaults[o.name]) if o.name in spec.defaults else o
              for o in CORE_OPTIONS]
    schema += list(spec.options)
    return schema


def resolve_options(spec: BackboneSpec, model_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate `model_options` for `spec`; return every option with defaults filled in.

    Raises OptionError for an unknown key (listing the valid ones) or a bad value (saying what fits).
    """
    opts = validate_mapping(f'model_options for {spec.name!r}', model_options, option_schema(spec))
    if opts['pooler'] is not None:
        opts['pooler_options'] = validate_pooler_options(opts['pooler'], opts['pooler_options'])
    elif opts['pooler_options']:
        raise OptionError(f"model_options for {spec.name!r}: 'pooler_options' given but 'pooler' is None; "
                          f"choose a pooler ({', '.join(pooler_names())}) or drop 'pooler_options'.")
    if opts['head'] == PROJECTION and opts['output_dim'] is None:
        raise OptionError(f"model_options for {spec.name!r}: head 'projection' needs 'output_dim'.")
    opts['head_options'] = validate_head_options(opts['head'], opts['output_dim'], opts['head_options'])
    if opts['head'] == COSINE_CLASSIFIER and opts['head_options'].get('num_classes') is None:
        raise OptionError(f"model_options for {spec.name!r}: head 'cosine_classifier' needs "
                          f"head_options={{'num_classes': <number of training classes>}}.")
    opts['preprocess_options'] = validate_mapping(f'preprocess_options for {spec.name!r}',
                                                  opts['preprocess_options'], spec.preprocess_options)
    check_prompt_options(opts, spec.name)
    return opts




class EmbeddingModel(nn.Module):
    """A backbone turned into an embedding model.

    ``model(batch)`` returns ``(N, output_dim)`` embeddings (L2-normalized unless ``normalize=False``).
    ``model(batch, return_logits=True)`` also returns the cosine classifier's logits, for training.
    ``model.encode(items)`` preprocesses raw items and embeds them in batches.
    """

    def __init__(self, backbone: Backbone, pooler: Pooler | None, projection: nn.Module | None,
                 classifier: CosineClassifier | None, normalize: bool, name: str, options: dict[str, Any]):
        super().__init__()
        self.backbone = backbone
        self.pooler = pooler
        self.projection = projection
        self.classifier = classifier
        self.normalize = normalize
        self.name = name
        self.options = options
        #: Matryoshka: embed to the leading dimensions only (re-normalized); None: all (see :func:`at_size`)
        self.truncate_dim: int | None = None
        if projection is not None:
            self.output_dim = projection.out_dim
        else:
            self.output_dim = backbone.own_dim if pooler is None else backbone.pooled_dim

    @property
    def modality(self) -> str:
        return self.backbone.modality

    @property
    def takes_prompts(self) -> bool:
        """Whether texts put before the items (``model_options`` prompts) apply to this model (see
        :mod:`finetune.prompts`)."""
        return bool(self.backbone.takes_prompts) and 'prompts' in self.options

    def train(self, mode: bool = True) -> 'EmbeddingModel':
        """Like ``nn.Module.train``, but a frozen BatchNorm layer (every parameter frozen by ``freeze``)
        stays in eval mode: it keeps normalizing with its running statistics and does not update them. A
        backbone frozen whole is a fixed feature extractor and stays in eval mode entirely (its dropout off
        too), so that its features are the ones inference gives and can be cached (``fit(feature_cache=)``)."""
        super().train(mode)
        if mode and backbone_frozen(self.backbone):
            self.backbone.eval()
        elif mode:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    params = list(module.parameters(recurse=False))
                    if params and not any(p.requires_grad for p in params):
                        module.eval()
        return self

    def embed(self, batch: Any) -> torch.Tensor:
        """backbone -> pooler -> projection -> L2 normalization of a checked `batch`: the whole embedding
        pipeline, and exactly what an exported graph holds. Backbone :class:`Features` already computed (a
        frozen backbone's cached output) skip the backbone."""
        features = batch if isinstance(batch, Features) else self.backbone(batch)
        if self.pooler is None:
            pooled = self.backbone.pool_own(features)
        else:
            pooled = self.backbone.after_pooler(self.pooler(features.tensor, features.mask))
        embeddings = self.projection(pooled) if self.projection is not None else pooled
        if self.truncate_dim is not None:
            embeddings = embeddings[..., :self.truncate_dim]
        if self.normalize or self.truncate_dim is not None:  # a cut is re-normalized, as finetune.dims does
            embeddings = l2_normalize(embeddings, dim=-1)
        return embeddings

    def forward(self, batch: Any, return_logits: bool = False):
        """Embeddings of `batch` (what :meth:`preprocess` makes, or cached backbone :class:`Features`), and
        with `return_logits` the cosine classifier's logits."""
        if not isinstance(batch, Features):
            self.backbone.check_batch(batch)
        embeddings = self.embed(batch)
        if not return_logits:
            return embeddings
        if self.classifier is None:
            raise OptionError("return_logits=True needs the cosine classifier head: build the model with "
                              "model_options={'head': 'cosine_classifier', 'head_options': {'num_classes': K}}.")
        return embeddings, self.classifier(embeddings)

    def preprocess(self, items: Sequence[Any], prompt: str | None = None) -> Any:
        """Raw items (paths, PIL images, arrays, ...) -> one batch for :meth:`forward`; `prompt`: a text put before
        each item (a text model with prompts; see :mod:`finetune.prompts`)."""
        return self._prompted(items, prompt, self.backbone.preprocess)

    def _prompted(self, items: Sequence[Any], prompt: str | None, preprocess: Callable) -> Any:
        """`preprocess` of `items` with `prompt` before each; with ``include_prompt=False`` the batch also says
        which tokens are the prompt's, so that the pooling leaves them out."""
        if not prompt:
            return preprocess(items)
        items = [items] if isinstance(items, str) else list(items)
        bad = next((i for i, item in enumerate(items) if not isinstance(item, str)), None)
        if bad is not None:
            raise InputError(f'{self.name!r}: a prompt goes before texts; item {bad} is a '
                             f'{type(items[bad]).__name__}.')
        batch = preprocess([prompt + item for item in items])
        if self.options.get('include_prompt', True) is False:
            batch = self.backbone.exclude_prompt(batch, prompt)
        return batch

    def check_file(self, path: str) -> str | None:
        """Why the file at `path` cannot be an item of this model, or None (a stat and a header read)."""
        return self.backbone.check_file(path)

    def preprocess_for_training(self, items: Sequence[Any], prompt: str | None = None) -> Any:
        """Like :meth:`preprocess`, with the family's training augmentation (if it has one)."""
        return self._prompted(items, prompt, self.backbone.preprocess_train)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device('cpu')

    def encode(self, items: Sequence[Any] | Iterable[Any], batch_size: int = 32,
               convert_to: str = 'numpy', prompt: str | None = None) -> np.ndarray | torch.Tensor:
        """Embed raw `items` in batches under inference mode; returns ``(len(items), output_dim)``.

        `convert_to` is ``'numpy'`` (float32 array) or ``'torch'`` (a CPU tensor). `prompt` (text models with
        prompts): the name of one of the model's prompts, a text of its own, or ``''`` for none; None: the
        model's ``default_prompt``, if it has one (:func:`finetune.prompts.resolve_prompt`).
        Raises InputError for items this model cannot take, or a prompt it cannot.
        """
        text = resolve_prompt(self, prompt)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                return encode_in_batches(
                    items, self.modality, self.output_dim, batch_size, convert_to,
                    lambda chunk: self(batch_to(self.preprocess(chunk, text), self.device)).float().cpu())
        finally:
            self.train(was_training)

    def extra_repr(self) -> str:
        return f'name={self.name!r}, output_dim={self.output_dim}, normalize={self.normalize}'


def backbone_frozen(backbone: nn.Module) -> bool:
    """True when `backbone` has parameters and none of them trains (``freeze=True``)."""
    params = list(backbone.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def encode_in_batches(items: Any, modality: str, output_dim: int, batch_size: int, convert_to: str,
                      embed_chunk: Callable[[list], torch.Tensor]) -> np.ndarray | torch.Tensor:
    """``encode`` for any runtime: `items` (one item or a sequence) cut into batches of `batch_size`, texts of
    similar lengths together (less padding), each batch embedded by `embed_chunk` (a list of items -> a CPU
    float tensor), the rows put back in the items' order. Raises InputError for a bad `batch_size` or
    `convert_to` (``'numpy'`` or ``'torch'``). A numpy array of texts (dtype str or object) is a sequence of them."""
    items = array_items(items)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise InputError(f'batch_size: expected a positive integer, got {batch_size!r}.')
    if convert_to not in ('numpy', 'torch'):
        raise InputError(f"convert_to: expected 'numpy' or 'torch', got {convert_to!r}.")
    if is_one_item(items, modality):
        items = [items]  # one item, not a sequence of them
    items = list(items)
    order = list(range(len(items)))
    if modality == 'text' and all(isinstance(i, str) for i in items):
        order.sort(key=lambda i: -len(items[i]))  # similar lengths share a batch: less padding
    chunks = [embed_chunk([items[i] for i in order[start:start + batch_size]])
              for start in range(0, len(items), batch_size)]
    out = torch.cat(chunks) if chunks else torch.empty(0, output_dim)
    if order != sorted(order):
        out = out[torch.argsort(torch.tensor(order))]
    return out.numpy() if convert_to == 'numpy' else out


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix.rstrip('.') + '.')


def _apply_freeze(backbone: Backbone, freeze_opt: bool | tuple[str, ...] | dict, name: str) -> None:
    if freeze_opt is False:
        return
    params = dict(backbone.named_parameters())
    if freeze_opt is True:
        for p in params.values():
            p.requires_grad_(False)
        return
    if isinstance(freeze_opt, dict):  # everything before the last N layers
        groups = backbone.layer_groups()
        n = freeze_opt['except_last_layers']
        if n > len(groups):
            raise OptionError(f"option 'freeze' for {name!r}: except_last_layers={n} but the backbone has "
                              f'{len(groups)} layers ({groups[0]} ... {groups[-1]}).')
        keep = groups[len(groups) - n:]
        for param_name, p in params.items():  # parameters come input to output
            if any(_under(param_name, prefix) for prefix in keep):
                break
            p.requires_grad_(False)
        return
    inner = getattr(backbone, 'param_prefix', '')  # e.g. 'model.' for a wrapped Hugging Face model
    for prefix in freeze_opt:
        hits = [n for n in params if _under(n, prefix) or (inner and _under(n, inner + prefix))]
        if not hits:
            tops = sorted({n.split('.')[0] for n in params})
            seconds = sorted({'.'.join(n.split('.')[:2]) for n in params})
            raise OptionError(f"option 'freeze' for {name!r}: no backbone parameter is under {prefix!r}."
                              f'{did_you_mean(prefix, seconds)} Top-level layers: {", ".join(tops)}.')
        for n in hits:
            params[n].requires_grad_(False)


def _check_pooler_layout(pooler: str | None, layout: str | None, model: str) -> None:
    if pooler is None:
        return
    if layout is None:
        raise OptionError(f"option 'pooler': {model!r} exposes no unpooled features, so it takes only "
                          f"pooler=None (its own pooling), got {pooler!r}.")
    cls = pooler_class(pooler)
    if layout not in cls.layouts:
        fits = [p for p in pooler_names() if layout in pooler_class(p).layouts]
        raise OptionError(f"option 'pooler': {cls.name!r} needs {' or '.join(cls.layouts)} features but "
                          f"{model!r} produces {layout} features. Poolers that fit: {', '.join(fits)}, or None.")


def build_model(name: str, model_options: Mapping[str, Any] | None = None) -> EmbeddingModel | MultiTowerModel:
    """Build the embedding model registered as `name`, configured by `model_options`.

    Returns an :class:`EmbeddingModel` in eval mode, or a :class:`MultiTowerModel` for a family with one
    tower per modality (CLIP). Raises UnknownModelError for an unknown name, OptionError for a bad
    option, WeightsNotFoundError when pretrained weights are unavailable offline.
    """
    spec = REGISTRY.get(name)
    opts = resolve_options(spec, model_options)
    if spec.layout is not None:  # refuse a pooler that cannot fit before loading any weights
        _check_pooler_layout(opts['pooler'], spec.layout, spec.name)
    built = spec.build(opts)
    if isinstance(built, Towers):
        unfrozen = dict(opts, freeze=False)  # prefixes may name either tower: freeze them together below
        towers = {tower: _assemble(backbone, unfrozen, f'{spec.name}[{tower}]')
                  for tower, backbone in built.backbones.items()}
        model = MultiTowerModel(towers, built.logit_scale, spec.name, opts)
        _apply_freeze(_TowerBackbones(built.backbones), opts['freeze'], spec.name)
        return _training_options(model, list(built.backbones.values()), opts, spec.name).eval()
    return _training_options(_assemble(built, opts, spec.name), [built], opts, spec.name).eval()


def _training_options(model, backbones: list[Backbone], opts: dict[str, Any], name: str):
    """`model` with gradient checkpointing turned on in its backbones and LoRA adapters attached, as `opts`
    say; returns it."""
    if opts['gradient_checkpointing']:
        for backbone in backbones:
            backbone.enable_gradient_checkpointing()
    if opts['lora']:
        attach_lora(backbones, opts['lora'], name)
    if opts['unlocked_layers'] is not None:
        if opts['lora']:
            raise OptionError(f"model_options for {name!r}: 'unlocked_layers' and 'lora' both choose what trains; "
                              f'give one of them.')
        apply_unlocked_layers(model_backbones(model), opts['unlocked_layers'], name)
    return model


class _TowerBackbones(nn.Module):
    """The backbones of all towers seen as one (shared modules counted once), for ``freeze``."""

    def __init__(self, backbones: dict[str, Backbone]):
        super().__init__()
        self.parts = list(backbones.values())
        self.param_prefix = ''

    def named_parameters(self, *args, **kwargs):
        seen = set()
        for backbone in self.parts:
            for name, p in backbone.named_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield name, p

    def layer_groups(self) -> list[str]:
        return [g for backbone in self.parts for g in backbone.layer_groups()]


def _assemble(backbone: Backbone, opts: dict[str, Any], name: str) -> EmbeddingModel:
    """backbone -> pooler -> projection -> normalize (+ classifier), as `opts` say."""
    _check_pooler_layout(opts['pooler'], backbone.layout, name)
    pooler = None
    if opts['pooler'] is not None:
        pooler = build_pooler(opts['pooler'], opts['pooler_options'])
    in_dim = backbone.own_dim if pooler is None else backbone.pooled_dim
    projection = None
    head_opts = opts['head_options']
    if opts['output_dim'] is not None:
        projection = ProjectionHead(in_dim, opts['output_dim'], hidden_dims=head_opts['hidden_dims'],
                                    activation=head_opts['activation'], dropout=head_opts['dropout'])
    classifier = None
    if opts['head'] == COSINE_CLASSIFIER:
        classifier = CosineClassifier(opts['output_dim'] or in_dim, head_opts['num_classes'],
                                      scale=head_opts['scale'])
    _apply_freeze(backbone, opts['freeze'], name)
    return EmbeddingModel(backbone, pooler, projection, classifier, opts['normalize'], name, opts)


class MultiTowerModel(nn.Module):
    """One tower (an :class:`EmbeddingModel`) per modality, all embedding into one space (CLIP).

    ``encode(items)`` picks the tower from the items (strings -> the text tower, anything else -> the
    other one) or takes ``tower=`` explicitly; ``model(batch, tower='image')`` runs one tower.
    ``logit_scale`` (when the family has one) is the learnable log temperature of the contrastive loss.
    """

    def __init__(self, towers: dict[str, EmbeddingModel], logit_scale: float | None, name: str,
                 options: dict[str, Any]):
        super().__init__()
        dims = {t: m.output_dim for t, m in towers.items()}
        if len(set(dims.values())) != 1:
            raise OptionError(f'{name!r}: its towers embed into different sizes {dims}; set output_dim to '
                              f'project them into one space.')
        self.towers = nn.ModuleDict(towers)
        self.logit_scale = None if logit_scale is None else nn.Parameter(torch.tensor(float(logit_scale)))
        self.output_dim = next(iter(dims.values()))
        self.name, self.options = name, options

    @property
    def modality(self) -> str:
        return '+'.join(m.modality for m in self.towers.values())

    def tower_for(self, items: Sequence[Any]) -> str:
        """The tower that takes `items`: the text tower for strings, the other tower otherwise."""
        return tower_for(self.towers, items, self.name)

    def _tower(self, tower: str) -> EmbeddingModel:
        return pick_tower(self.towers, tower)

    def forward(self, batch: Any, tower: str, return_logits: bool = False):
        return self._tower(tower)(batch, return_logits=return_logits)

    def encode(self, items, batch_size: int = 32, convert_to: str = 'numpy', tower: str | None = None,
               prompt: str | None = None):
        """Embed `items` with `tower` (picked from the items when None); see :meth:`EmbeddingModel.encode`
        (`prompt` applies to a text tower that takes prompts)."""
        return encode_with_towers(self.towers, self.name, items, batch_size, convert_to, tower, prompt)


def tower_for(towers: Mapping[str, Any], items: Sequence[Any], name: str) -> str:
    """The tower of `towers` (name -> a model with a ``modality``) that takes `items`: the text tower for
    strings, the other tower otherwise. Raises InputError for a batch that mixes texts and files."""
    by_modality = {m.modality: t for t, m in towers.items()}
    texts = [isinstance(i, str) and not os.path.isfile(i) for i in items]
    if any(texts) and not all(texts):
        raise InputError(f'{name!r}: a batch mixes texts and images; encode each with its own call '
                         f'or pass tower= ({", ".join(towers)}).')
    if all(texts) and 'text' in by_modality:
        return by_modality['text']
    others = [t for m, t in by_modality.items() if m != 'text']
    return others[0] if others else next(iter(towers))


def pick_tower(towers: Mapping[str, Any], tower: str) -> Any:
    """``towers[tower]``; InputError naming the towers for another name."""
    if tower not in towers:
        raise InputError(f'tower: expected one of {", ".join(map(repr, towers))}, got {tower!r}.')
    return towers[tower]


def encode_with_towers(towers: Mapping[str, Any], name: str, items: Any, batch_size: int, convert_to: str,
                       tower: str | None, prompt: str | None = None):
    """``encode`` of a multi-tower model: `items` embedded by `tower`, or by the tower :func:`tower_for` picks."""
    items = array_items(items)
    if is_one_item(items):
        items = [items]
    items = list(items)
    chosen = pick_tower(towers, tower or tower_for(towers, items, name))
    extra = {} if prompt is None else {'prompt': prompt}  # None: each tower's own default
    return chosen.encode(items, batch_size=batch_size, convert_to=convert_to, **extra)
