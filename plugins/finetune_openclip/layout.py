"""A model of this plugin written in open_clip's own checkpoint layout (what ``open_clip.create_model(name,
pretrained='<file>')`` loads): the towers' weights under open_clip's names."""
from __future__ import annotations

import torch
from torch import nn

from .backbone import ImageTower, TextTower

#: the text modules open_clip's plain CLIP keeps at the top level (``CLIP``) rather than under ``text.``
_PLAIN_CLIP_TEXT = ('positional_embedding', 'text_projection', 'token_embedding', 'transformer', 'ln_final')


def openclip_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of a model built by this plugin in open_clip's checkpoint layout (``visual.*``, the text
    tower, ``logit_scale``): ``open_clip.create_model(name, pretrained='<file>')`` and this plugin's
    ``pretrained='<file>'`` both load a file saved from it.

    An open_clip text transformer is written in plain CLIP's layout (its modules at the top level), which
    open_clip converts for custom-text models too; other text towers (Hugging Face) stay under ``text.``.
    `model` is a :class:`~finetune.model.MultiTowerModel` or a one-tower EmbeddingModel; heads added on
    top of the towers (``output_dim``) are not part of open_clip's model and are left out.
    """
    towers = dict(model.towers) if hasattr(model, 'towers') else {model.modality: model}
    state: dict[str, torch.Tensor] = {}
    for embedding_model in towers.values():
        backbone = embedding_model.backbone
        if isinstance(backbone, TextTower):
            text = {k: v.detach().clone() for k, v in backbone.text.state_dict().items()}
            from open_clip.transformer import TextTransformer
            plain = isinstance(backbone.text, TextTransformer) and all(
                k.split('.')[0] in _PLAIN_CLIP_TEXT for k in text)
            state.update(text if plain else {'text.' + k: v for k, v in text.items()})
        elif isinstance(backbone, ImageTower):
            state.update({'visual.' + k: v.detach().clone() for k, v in backbone.visual.state_dict().items()})
        else:
            raise TypeError(f'{type(backbone).__name__} is not an open_clip tower of this plugin.')
    if getattr(model, 'logit_scale', None) is not None:
        state['logit_scale'] = model.logit_scale.detach().clone()
    return state
