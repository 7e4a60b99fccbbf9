"""The open_clip towers (text and image halves of one open_clip model) and building them."""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

from finetune.backbone import Backbone, Features, Towers
from finetune.errors import InputError, OptionError, WeightsNotFoundError
from finetune.layers import PatchDropout, block_layers
from finetune.preprocessing import ImagePreprocessor, check_image_batch
from finetune_hfhub import enable_checkpointing, linear_names

from .config import PREFIX, _open_clip, _quiet_open_clip, _square_size, model_config, tag_quick_gelu
from .weights import check_hf_text_available, load_weights, pretrained_weights_path

#: the modules LoRA adapters wrap by default, those a tower has: open_clip's attention output and MLP projections,
#: and the attention and dense layers of a transformers (BERT-like) text tower. An ``out_proj`` inside torch's
#: nn.MultiheadAttention is left out: that module reads its weight directly, so an adapter there would never act
LORA_TARGETS = ('out_proj', 'c_fc', 'c_proj', 'query', 'key', 'value', 'dense')


def lora_targets(tower: nn.Module) -> tuple[str, ...]:
    """The :data:`LORA_TARGETS` that the Linear layers of `tower` have (see there)."""
    present = linear_names(tower)
    if any(isinstance(module, nn.MultiheadAttention) for module in tower.modules()):
        present.discard('out_proj')
    return tuple(name for name in LORA_TARGETS if name in present)


def enable_grad_checkpointing(tower: nn.Module, name: str) -> None:
    """Gradient checkpointing in an open_clip tower (`tower` is ``model.text`` or ``model.visual``), non-reentrant:
    transformers' for a transformers text tower, open_clip's ``set_grad_checkpointing`` for its own transformers
    and timm trunks. OptionError for a tower without it (open_clip's ModifiedResNet)."""
    hf_model = getattr(tower, 'transformer', None)
    if getattr(hf_model, 'supports_gradient_checkpointing', False) and enable_checkpointing(hf_model):
        return
    if any(hasattr(module, 'grad_checkpointing') for module in tower.modules()) \
            and hasattr(tower, 'set_grad_checkpointing'):
        tower.set_grad_checkpointing(True)
        return
    raise OptionError(f"option 'gradient_checkpointing': {name!r} ({type(tower).__name__}) cannot recompute its "
                      f'activations; leave it False (transformer towers can).')


def tower_layers(prefix: str, tower: nn.Module, stem: tuple[str, ...]) -> list[tuple[str, ...]] | None:
    """``[stem, block 1, ..., block L + final norm and projection]`` of an open_clip transformer tower (its
    ``transformer.resblocks``), parameter names under `prefix`; None for another tower (a timm trunk, a ResNet, a
    transformers text model), which keeps the default layers."""
    blocks = getattr(getattr(tower, 'transformer', None), 'resblocks', None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        return None
    names = [f'{prefix}.{n}' for n, _ in tower.named_parameters()]
    return block_layers(names, [f'{prefix}.transformer.resblocks.{i}' for i in range(len(blocks))],
                        tuple(f'{prefix}.{s}' for s in stem))


def set_patch_dropout(visual: nn.Module, p: float, name: str) -> None:
    """Patch dropout in an open_clip ViT (its ``patch_dropout`` slot, after the class token and positions);
    OptionError for an image tower without one (a ResNet, a timm trunk)."""
    if not p:
        return
    if not hasattr(visual, 'patch_dropout') or not hasattr(visual, 'class_embedding'):
        raise OptionError(f"option 'patch_dropout': the image tower of {name!r} ({type(visual).__name__}) is no "
                          f'open_clip ViT with patch tokens; leave patch_dropout at 0.')
    visual.patch_dropout = PatchDropout(p, keep_first=1)


def _first(output: Any) -> torch.Tensor:
    """A tower's embedding: CoCa-style towers return (embedding, tokens)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class TextTower(Backbone):
    """The text half of an open_clip model (``model.text``): strings -> the model's CLIP text embedding.

    ``preprocess`` uses open_clip's tokenizer for the model; ``forward`` is open_clip's ``encode_text``
    (transformer, pooling and projection), unnormalized.
    """
    default_learning_rate = 1e-5
    worker_environment = {'TOKENIZERS_PARALLELISM': 'false'}
    packages = ('open_clip_torch',)

    modality = 'text'
    layout = None

    def __init__(self, text: nn.Module, tokenizer: Any, embed_dim: int, context_length: int | None, name: str):
        super().__init__()
        self.text = text
        self.tokenizer = tokenizer
        self.own_dim = self.pooled_dim = embed_dim
        self.context_length = context_length
        # open_clip's own text transformer has a fixed-size causal mask: inputs must be exactly that long
        self.fixed_length = getattr(text, 'attn_mask', None) is not None
        self.model_name = name

    def forward(self, batch: torch.Tensor) -> Features:
        return Features(_first(self.text(batch)))

    def pool_own(self, features: Features) -> torch.Tensor:
        return features.tensor

    def lora_target_modules(self) -> tuple[str, ...]:
        return lora_targets(self.text)

    def depth_layers(self) -> list[tuple[str, ...]]:
        return tower_layers('text', self.text, ('token_embedding', 'positional_embedding', 'cls_emb')) \
            or super().depth_layers()

    def enable_gradient_checkpointing(self) -> None:
        enable_grad_checkpointing(self.text, self.model_name)

    def preprocess(self, items: Sequence[Any]) -> torch.Tensor:
        """A list of strings -> token ids ``(N, context_length)``; InputError for anything but strings."""
        if isinstance(items, str):
            items = [items]
        items = list(items)
        if not items:
            raise InputError(f'{self.model_name!r}: no texts to encode; expected a non-empty list of strings.')
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise InputError(
                    f'{self.model_name!r} is a text tower: it takes strings, but item {i} is '
                    f'{type(item).__name__}. Encode images with the image tower (tower=\'image\').')
        return self.tokenizer(items)

    def export(self, directory: str) -> str:
        """Nothing to write (the architecture is open_clip's own); the name that rebuilds this model."""
        return self.artifact_name

    def check_batch(self, batch: Any) -> None:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else None
        if shape is None or batch.dim() != 2 or batch.is_floating_point() or batch.is_complex():
            got = f'a {batch.dtype} tensor of shape {shape}' if shape is not None else type(batch).__name__
            raise InputError(f'{self.model_name!r} is a text tower: expected token ids, an integer (N, L) tensor '
                             f'from preprocess(list of strings), got {got}. Use model.encode(texts) for raw '
                             f"strings, or the image tower (tower='image') for images.")
        if self.context_length and (batch.shape[1] > self.context_length
                                    or (self.fixed_length and batch.shape[1] != self.context_length)):
            need = 'exactly' if self.fixed_length else 'at most'
            raise InputError(f'{self.model_name!r} takes {need} {self.context_length} tokens per text, got '
                             f'{batch.shape[1]}. Use model.preprocess(texts) to tokenize.')


class ImageTower(Backbone):
    """The image half of an open_clip model (``model.visual``): images -> the model's CLIP image embedding."""
    default_learning_rate = 1e-5
    packages = ('open_clip_torch',)

    modality = 'image'
    layout = None

    def __init__(self, visual: nn.Module, preprocess: dict[str, Any], embed_dim: int, name: str):
        super().__init__()
        self.visual = visual
        self.image_size = preprocess['image_size']
        self.preprocessor = ImagePreprocessor(**preprocess)
        self.own_dim = self.pooled_dim = embed_dim
        self.model_name = name

    def forward(self, batch: torch.Tensor) -> Features:
        return Features(_first(self.visual(batch)))

    def pool_own(self, features: Features) -> torch.Tensor:
        return features.tensor

    def lora_target_modules(self) -> tuple[str, ...]:
        return lora_targets(self.visual)

    def depth_layers(self) -> list[tuple[str, ...]]:
        return tower_layers('visual', self.visual, ('conv1', 'class_embedding', 'positional_embedding', 'ln_pre')) \
            or super().depth_layers()

    def enable_gradient_checkpointing(self) -> None:
        enable_grad_checkpointing(self.visual, self.model_name)

    def preprocess(self, items: Sequence[Any]) -> torch.Tensor:
        """Paths, PIL images, arrays or tensors -> ``(N, 3, S, S)``; InputError for texts."""
        if isinstance(items, (str, os.PathLike)):
            items = [items]
        items = list(items)
        for i, item in enumerate(items):
            if isinstance(item, str) and not os.path.isfile(item):
                raise InputError(
                    f'{self.model_name!r} is an image tower: item {i} is a string that names no existing file '
                    f"({item[:40]!r}). Encode texts with the text tower (tower='text'); image paths must exist.")
        return self.preprocessor(items)

    def check_batch(self, batch: Any) -> None:
        check_image_batch(batch, self.model_name, self.image_size)

    def export(self, directory: str) -> str:
        return self.artifact_name


def create_openclip(model: str, tag: str | None, image_size: int, base_weights: bool,
                    quick_gelu: bool | None = None) -> nn.Module:
    """open_clip's `model` with its text tower as ``model.text`` (force_custom_text) and no CLIP weights.

    The activations follow `quick_gelu`, or `tag` when it is None (OpenAI's tags need QuickGELU). With
    `base_weights`, towers whose config asks for their own pretrained weights (``hf_model_pretrained`` /
    ``timm_model_pretrained``) get them.
    """
    oc = _open_clip()
    cfg = model_config(model)
    kwargs: dict[str, Any] = {
        'pretrained': None,
        'force_custom_text': True,
        'force_quick_gelu': tag_quick_gelu(model, tag) if quick_gelu is None else quick_gelu,
        'pretrained_text': base_weights and bool(cfg['text_cfg'].get('hf_model_pretrained', False)),
        'pretrained_image': base_weights and bool(cfg['vision_cfg'].get('timm_model_pretrained', False)),
    }
    if image_size != _square_size(cfg['vision_cfg'].get('image_size', 224), model):
        kwargs['force_image_size'] = image_size
    with _quiet_open_clip():
        return oc.create_model(model, **kwargs)


def build(model: str, tag: str | None, display: str, options: dict[str, Any]) -> Towers | Backbone:
    """Build open_clip `model` (weights of `tag` when ``pretrained=True``) as towers, with validated `options`.

    Returns :class:`~finetune.backbone.Towers` (text and image), or one tower with ``tower='text'|'image'``.
    Raises OptionError for a pooler, WeightsNotFoundError when the weights are out of reach offline.
    """
    if options['pooler'] is not None:
        raise OptionError(f"option 'pooler': {display!r} exposes no unpooled features (open_clip towers give "
                          f"their own CLIP embedding), so it takes only pooler=None, got {options['pooler']!r}. "
                          f"Use output_dim to add a projection head.")
    tower, pretrained = options['tower'], options['pretrained']
    path = None
    if pretrained is True:
        if tag is None:
            raise WeightsNotFoundError(f'{display!r}: open_clip has no pretrained weights for {model!r}. Pass a '
                                       f"weights file as model_options={{'pretrained': '/path/to/file'}} or use "
                                       f"model_options={{'pretrained': False}}.")
        path = pretrained_weights_path(model, tag, display)
    elif isinstance(pretrained, str):
        path = pretrained
    cfg = model_config(model)
    check_hf_text_available(cfg, model, display)
    pre = options['preprocess_options']
    if options['quick_gelu'] is None:  # recorded, so that a saved model (whose name has no tag) rebuilds the same
        options['quick_gelu'] = tag_quick_gelu(model, tag)
    clip = create_openclip(model, tag, pre['image_size'], base_weights=path is None, quick_gelu=options['quick_gelu'])
    if path is not None:
        load_weights(clip, path, display, tower)
    embed_dim = int(cfg['embed_dim'])
    towers: dict[str, Backbone] = {}
    if tower in (None, 'text'):
        tokenizer = _open_clip().get_tokenizer(model)
        towers['text'] = TextTower(clip.text, tokenizer, embed_dim, getattr(tokenizer, 'context_length', None),
                                   f'{display}[text]')
    if tower in (None, 'image'):
        set_patch_dropout(clip.visual, options.get('patch_dropout', 0.0), display)
        towers['image'] = ImageTower(clip.visual, pre, embed_dim, f'{display}[image]')
    # a saved model holds its weights: its name need not (and, pointing outside the artifact, may not)
    # carry the weights file it was built from
    artifact_name = f'{PREFIX}:{model}' if display.startswith(f'{PREFIX}:') and display.count(':') > 1 \
        and tag is None else display
    for backbone in towers.values():
        backbone.artifact_name = artifact_name
    if tower is not None:
        return towers[tower]
    return Towers(backbones=towers, logit_scale=float(clip.logit_scale.detach().reshape(-1)[0]))
