"""What open_clip says about a model and a pretrained tag: its config, tags, weights config, preprocessing
and QuickGELU, read lazily (importing this module does not import open_clip)."""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from finetune.errors import UnknownModelError, did_you_mean

PREFIX = 'openclip'

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

#: what open_clip says about the named models' weights (checked by the tests), so that the offline error
#: comes without importing open_clip
KNOWN_PRETRAINED: dict[tuple[str, str], dict[str, Any]] = {
    ('ViT-B-32', 'openai'): {
        'url': 'https://openaipublic.azureedge.net/clip/models/'
               '40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt',
        'hf_hub': 'timm/vit_base_patch32_clip_224.openai/', 'quick_gelu': True},
    ('ViT-L-14', 'openai'): {
        'url': 'https://openaipublic.azureedge.net/clip/models/'
               'b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt',
        'hf_hub': 'timm/vit_large_patch14_clip_224.openai/', 'quick_gelu': True},
    ('xlm-roberta-base-ViT-B-32', 'laion5b_s13b_b90k'): {
        'url': '', 'hf_hub': 'laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k/', 'quick_gelu': False},
}


def _open_clip():
    import open_clip
    return open_clip


def model_config(model: str) -> dict[str, Any]:
    """open_clip's architecture config of `model`; raises UnknownModelError with the closest names."""
    oc = _open_clip()
    cfg = oc.get_model_config(model) if model in oc.list_models() else None
    if cfg is None:
        extra = ''
        if model in ('hf-hub', 'local-dir'):
            extra = (" open_clip's 'hf-hub:' / 'local-dir:' names are not supported; use the architecture name "
                     "(open_clip.list_models()) with a local weights file: openclip:<model>:<file>.")
        raise UnknownModelError(f'unknown open_clip model {model!r}.{did_you_mean(model, oc.list_models())}{extra} '
                                f"See finetune.list_models('openclip:*') for every name.")
    return cfg


def pretrained_tags(model: str) -> list[str]:
    """The pretrained tags open_clip knows for `model` (its first one is the default)."""
    return list(_open_clip().list_pretrained_tags_by_model(model))


def clean_tag(tag: str) -> str:
    """open_clip's spelling of a tag: lower case, '-' as '_'."""
    return tag.lower().replace('-', '_')


def pretrained_cfg(model: str, tag: str) -> dict[str, Any]:
    """open_clip's pretrained config (url, hf_hub, mean, std, quick_gelu, ...) of `model` with `tag`."""
    known = KNOWN_PRETRAINED.get((model, tag))
    if known is not None:
        return dict(known)
    return dict(_open_clip().get_pretrained_cfg(model, tag))


def _square_size(size: Any, model: str) -> int:
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise UnknownModelError(f'open_clip model {model!r} takes {size[0]}x{size[1]} images; only square '
                                    f'inputs are supported here.')
        size = size[0]
    return int(size)


def live_preprocess_defaults(model: str, tag: str | None) -> dict[str, Any]:
    """The preprocessing `model`'s weights (`tag`) expect, read from open_clip.

    open_clip resizes the shorter side to the crop size and centre-crops ('shortest' mode), so
    ``resize_size == image_size``. Models trained with 'squash' resizing (SigLIP) get the same
    shortest-side resize and centre crop.
    """
    cfg = model_config(model)
    size = _square_size(cfg['vision_cfg'].get('image_size', 224), model)
    pcfg = _open_clip().get_pretrained_cfg(model, tag) if tag else {}
    interpolation = pcfg.get('interpolation', 'bicubic')
    return {
        'image_size': size,
        'resize_size': size,
        'mean': tuple(float(v) for v in pcfg.get('mean', OPENAI_MEAN)),
        'std': tuple(float(v) for v in pcfg.get('std', OPENAI_STD)),
        'interpolation': interpolation if interpolation in ('bilinear', 'bicubic', 'nearest') else 'bicubic',
    }


class _DropOpenClipNotices(logging.Filter):
    """open_clip logs 'initialized randomly / partially' on the root logger; we chose that on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not ('open_clip' in record.pathname and record.levelno <= logging.WARNING)


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    root, notices = logging.getLogger(), _DropOpenClipNotices()
    root.addFilter(notices)
    try:
        yield
    finally:
        root.removeFilter(notices)


def tag_quick_gelu(model: str, tag: str | None) -> bool:
    """Whether the weights of `tag` were trained with QuickGELU (OpenAI's tags were)."""
    return bool(tag and pretrained_cfg(model, tag).get('quick_gelu', False))
