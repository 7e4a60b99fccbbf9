"""A Hugging Face ``CLIPModel`` directory as two towers (text and image) embedding into one space."""
from __future__ import annotations

import json
import os
import warnings
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from finetune.backbone import Backbone, Features, Towers
from finetune.errors import InputError, OptionError, WeightsNotFoundError
from finetune.layers import PatchDropout, block_layers
from finetune.preprocessing import ImagePreprocessor, check_image_batch
from finetune_hfhub import enable_checkpointing

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: the modules LoRA adapters wrap by default in either tower: attention and MLP projections
CLIP_LORA_TARGETS = ('q_proj', 'k_proj', 'v_proj', 'out_proj', 'fc1', 'fc2')


def _clip_layers(prefix: str, transformer: nn.Module, stem: tuple[str, ...], owner: nn.Module) -> list[tuple[str, ...]]:
    """``[embeddings, layer 1, ..., layer L + final norm and projection]`` of a CLIP transformer under `prefix`
    (``text_model`` or ``vision_model``) of `owner` (the tower)."""
    count = len(transformer.encoder.layers)
    names = [n for n, _ in owner.named_parameters()]
    return block_layers(names, [f'{prefix}.encoder.layers.{i}' for i in range(count)],
                        tuple(f'{prefix}.{s}' for s in stem))


def _checkpoint(transformer: nn.Module, name: str, tower: str) -> None:
    if not enable_checkpointing(transformer):
        raise OptionError(f"option 'gradient_checkpointing': the {tower} tower of {name!r} "
                          f'({type(transformer).__name__}) does not support it in transformers; leave it False.')


class HFCLIPTextTower(Backbone):
    """CLIP's text transformer and text projection; its own pooling (the end-of-text token) only."""
    default_learning_rate = 1e-5
    worker_environment = {'TOKENIZERS_PARALLELISM': 'false'}
    packages = ('transformers',)

    modality = 'text'
    #: prompts (model_options) go before its texts; it pools its own end token, so they cannot be left out of that
    takes_prompts = True
    layout = None
    lora_targets = CLIP_LORA_TARGETS

    def __init__(self, name: str, text_model: nn.Module, projection: nn.Module, tokenizer: Any, max_length: int):
        super().__init__()
        self.model_name = name
        self.text_model, self.text_projection = text_model, projection
        self.tokenizer, self.max_length = tokenizer, max_length
        self.own_dim = self.pooled_dim = projection.out_features

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Features:
        out = self.text_model(input_ids=batch['input_ids'], attention_mask=batch['attention_mask'])
        return Features(self.text_projection(out.pooler_output))

    def pool_own(self, features: Features) -> torch.Tensor:
        return features.tensor

    def enable_gradient_checkpointing(self) -> None:
        _checkpoint(self.text_model, self.model_name, 'text')

    def depth_layers(self) -> list[tuple[str, ...]]:
        return _clip_layers('text_model', self.text_model, ('embeddings',), self)

    def preprocess(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        bad = next((i for i, item in enumerate(items) if not isinstance(item, str)), None)
        if bad is not None:
            raise InputError(f'the text tower of {self.model_name!r} takes strings: item {bad} is a '
                             f'{type(items[bad]).__name__}. Pass images to the image tower.')
        return dict(self.tokenizer(list(items), padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors='pt'))

    def export(self, directory: str) -> str:
        return export_clip(self, directory)

    def check_batch(self, batch: Any) -> None:
        if not isinstance(batch, Mapping) or 'input_ids' not in batch:
            raise InputError(f'the text tower of {self.model_name!r} expects a tokenized batch (a dict with '
                             f'input_ids and attention_mask), got {type(batch).__name__}.')


class HFCLIPImageTower(Backbone):
    """CLIP's vision transformer and visual projection; its own pooling only."""
    default_learning_rate = 1e-5
    packages = ('transformers',)

    modality = 'image'
    layout = None
    lora_targets = CLIP_LORA_TARGETS

    def __init__(self, name: str, vision_model: nn.Module, projection: nn.Module, preprocess: dict,
                 patch_dropout: float = 0.0):
        super().__init__()
        self.model_name = name
        self.vision_model, self.visual_projection = vision_model, projection
        # patch dropout after the embeddings (class token first, then the patches), training only; no weights
        self.patch_dropout = PatchDropout(patch_dropout, keep_first=1)
        if patch_dropout:
            vision_model.embeddings.register_forward_hook(self._drop_patches)
        self.image_size = preprocess['image_size']
        self.preprocessor = ImagePreprocessor(**preprocess)
        self.own_dim = self.pooled_dim = projection.out_features

    def forward(self, batch: torch.Tensor) -> Features:
        return Features(self.visual_projection(self.vision_model(pixel_values=batch).pooler_output))

    def pool_own(self, features: Features) -> torch.Tensor:
        return features.tensor

    def enable_gradient_checkpointing(self) -> None:
        _checkpoint(self.vision_model, self.model_name, 'image')

    def _drop_patches(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return self.patch_dropout(output)

    def depth_layers(self) -> list[tuple[str, ...]]:
        return _clip_layers('vision_model', self.vision_model, ('embeddings', 'pre_layrnorm'), self)

    def preprocess(self, items):
        if any(isinstance(i, str) and not os.path.exists(i) for i in items):
            raise InputError(f'the image tower of {self.model_name!r} takes images (paths, PIL images, arrays); '
                             f'got text. Pass texts to the text tower.')
        return self.preprocessor(items)

    def check_batch(self, batch) -> None:
        check_image_batch(batch, self.model_name, self.image_size)

    def export(self, directory: str) -> str:
        return export_clip(self, directory)


def export_clip(tower: Backbone, directory: str) -> str:
    """Write the CLIP config and tokenizer (set on each tower by :func:`build_clip`) beside the artifact's
    weights, so that either tower, or both, rebuild offline; see HFTextBackbone.export."""
    tower.clip_config.save_pretrained(directory)
    tower.tokenizer.save_pretrained(directory)
    return 'hf:./backbone'


def clip_preprocess_defaults(directory: str, image_size: int) -> dict[str, Any]:
    """Image preprocessing from ``preprocessor_config.json`` when present, CLIP's otherwise."""
    cfg: dict = {}
    try:
        with open(os.path.join(directory, 'preprocessor_config.json')) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        pass
    crop = cfg.get('crop_size', image_size)
    crop = crop.get('height', image_size) if isinstance(crop, dict) else crop
    size = cfg.get('size', crop)
    size = size.get('shortest_edge', crop) if isinstance(size, dict) else size
    return {'image_size': int(crop), 'resize_size': int(size), 'mean': tuple(cfg.get('image_mean', CLIP_MEAN)),
            'std': tuple(cfg.get('image_std', CLIP_STD)), 'interpolation': 'bicubic'}


def build_clip(name: str, directory: str, options: dict[str, Any]) -> Towers | Backbone:
    """Build a CLIPModel directory as text and image towers (or one of them, per ``tower``)."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel
    pretrained = options['pretrained']
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            if pretrained is True:
                model = CLIPModel.from_pretrained(directory, local_files_only=True)
            else:
                model = CLIPModel(CLIPConfig.from_pretrained(directory, local_files_only=True))
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise WeightsNotFoundError(
                f'{directory!r} holds no complete CLIP model for {name!r}: expected config.json, tokenizer files '
                f"and, for pretrained weights, model.safetensors ({exc}). model_options={{'pretrained': False}} "
                f'needs only config.json and the tokenizer.') from exc
    if isinstance(pretrained, str):
        from finetune.weights import load_into, load_state_dict
        load_into(model, load_state_dict(pretrained), pretrained, name)
    pre = options['preprocess_options']
    text = HFCLIPTextTower(name, model.text_model, model.text_projection, tokenizer,
                           int(model.config.text_config.max_position_embeddings))
    image = HFCLIPImageTower(name, model.vision_model, model.visual_projection, pre, options.get('patch_dropout', 0.0))
    for one in (text, image):  # for export(): one config and tokenizer describe both towers
        one.clip_config, one.tokenizer = model.config, tokenizer
    tower = options.get('tower')
    if tower == 'text':
        return text
    if tower == 'image':
        return image
    return Towers({'text': text, 'image': image}, logit_scale=float(model.logit_scale.detach()))
