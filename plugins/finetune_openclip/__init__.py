"""finetune plugin: open_clip's CLIP models as text-to-image backbones, one tower per modality.

Named models (Jina Finetuner's names): ``clip-base-en`` (ViT-B-32, OpenAI weights, 512-d),
``clip-large-en`` (ViT-L-14, OpenAI weights, 768-d) and ``clip-base-multi`` (XLM-RoBERTa-base + ViT-B-32,
LAION-5B weights, 512-d). Any other open_clip model is ``openclip:<model>``, optionally with a pretrained
tag or a local weights file: ``openclip:ViT-B-16:laion2b_s34b_b88k``, ``openclip:ViT-B-32:/data/w.pt``.

``build`` returns :class:`~finetune.backbone.Towers` (a text tower and an image tower cut from one open_clip
model, so no parameter is duplicated, plus its learned log temperature); with ``tower='text'`` or
``tower='image'`` it returns that tower alone. Each tower gives the model's own CLIP embedding (the
projection included), so both embed into one space; the towers expose no unpooled features, so only
``pooler=None`` fits (``output_dim`` still adds a projection head per tower).

Pretrained weights, offline first: ``pretrained=True`` looks for the tag's file in the Hugging Face cache
and in open_clip's download folder (``~/.cache/clip``), downloads it only when the host answers within
seconds, and otherwise stops at once naming the file, the folders and the ways out.
"""
from __future__ import annotations

from finetune.registry import BackbonePlugin
from finetune_hfhub import OFFLINE_ENVS

from .config import PREFIX
from .specs import TASK, artifact_safe, list_prefixed, resolve
from .specs import specs as _specs  # `specs` stays the submodule

plugin = BackbonePlugin(
    name='openclip', specs=_specs, prefixes=(PREFIX,), resolve=resolve, list_prefixed=list_prefixed,
    prefix_tasks={PREFIX: (TASK,)}, artifact_safe=artifact_safe, offline_envs=OFFLINE_ENVS,
    note=(f"every open_clip model as {PREFIX}:<model>[:<tag or weights file>] ({TASK}); list them with "
          f"finetune.list_models('{PREFIX}:*')"),
)

__all__ = ['plugin']
