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

import contextlib
import fnmatch
import functools
import logging
import os
import warnings
import zipfile
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from finetune.backbone import Backbone, Features, Towers
from finetune.errors import (InputError, OptionError, UnknownModelError, WeightsLoadError, WeightsNotFoundError,
                             did_you_mean)
from finetune.options import Option, one_of
from finetune.preprocessing import ImagePreprocessor, check_image_batch, image_preprocess_options
from finetune.registry import BackbonePlugin, BackboneSpec
from finetune.hub import UrlFile, find_weights, network_problem, weights_not_found
from finetune.weights import load_into, load_state_dict
from finetune_hfhub import HUB_URL, OFFLINE_ENVS, HubFile, cached_file

PREFIX = 'openclip'
TASK = 'text-to-image'
TOWERS = ('text', 'image')

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_CLIP_PREPROCESS = {'image_size': 224, 'resize_size': 224, 'mean': OPENAI_MEAN, 'std': OPENAI_STD,
                    'interpolation': 'bicubic'}

#: the named models: (open_clip model, pretrained tag, embedding size, description). Checked against
#: open_clip by tests/test_openclip.py, so listing them neither imports open_clip nor builds anything.
NAMED: dict[str, tuple[str, str, int, str]] = {
    'clip-base-en': ('ViT-B-32', 'openai', 512,
                     "CLIP ViT-B/32 by OpenAI (open_clip 'ViT-B-32', pretrained 'openai'): text + image towers"),
    'clip-large-en': ('ViT-L-14', 'openai', 768,
                      "CLIP ViT-L/14 by OpenAI (open_clip 'ViT-L-14', pretrained 'openai'): text + image towers"),
    'clip-base-multi': ('xlm-roberta-base-ViT-B-32', 'laion5b_s13b_b90k', 512,
                        "multilingual CLIP: XLM-RoBERTa-base text tower + ViT-B/32 image tower, LAION-5B "
                        "(open_clip 'xlm-roberta-base-ViT-B-32', pretrained 'laion5b_s13b_b90k')"),
}

#: what open_clip says about the named models' weights and preprocessing (also checked by the tests), so
#: that the offline error and the option listing come without importing open_clip
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
KNOWN_PREPROCESS: dict[str, dict[str, Any]] = {name: dict(_CLIP_PREPROCESS) for name in NAMED}

#: open_clip's file names on the Hugging Face hub (open_clip.constants)
HF_WEIGHTS_NAME = 'open_clip_pytorch_model.bin'
HF_SAFE_WEIGHTS_NAME = 'open_clip_model.safetensors'

TOWER_OPTION = Option(
    'tower', 'str | None', None,
    "None: both towers (strings go to the text tower, images to the image tower); 'text' or 'image': "
    "build that tower alone (e.g. the image tower for image-to-image)", one_of(TOWERS, allow_none=True))


def _optional_bool(name: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise OptionError(f'option {name!r}: expected True, False or None, got {value!r}.')


QUICK_GELU_OPTION = Option(
    'quick_gelu', 'bool | None', None,
    "QuickGELU activations, as OpenAI's CLIP weights need; None follows the pretrained tag. A built model "
    'records the value it used, so a saved model rebuilds the same network', _optional_bool)

POOLER_NOTE = ("open_clip towers give only their own CLIP embedding (projection included), so pooler must "
               "be None; output_dim adds a projection head to each tower.")


def _open_clip():
    import open_clip
    return open_clip


# ---------------------------------------------------------------- names, configs, preprocessing

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


# ---------------------------------------------------------------- the towers

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


# ---------------------------------------------------------------- weights

def url_cache_dir() -> str:
    """The folder open_clip downloads URL weights into (``~/.cache/clip``, as OpenAI's clip package)."""
    return os.path.expanduser(os.path.join('~', '.cache', 'clip'))


def _hf_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """(repo id, file names to try, safetensors first), as open_clip's ``download_pretrained`` picks them."""
    repo, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    names = []
    if filename == HF_WEIGHTS_NAME:
        names.append(HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith(('.bin', '.pth')):
        names.append(filename[:-4] + '.safetensors')
    return repo, names + [filename]


def _url_download(url: str):
    """open_clip's own URL download (it checks the file's checksum) into its folder."""
    def fetch() -> str:
        with _quiet_open_clip():
            return _open_clip().download_pretrained_from_url(url, cache_dir=url_cache_dir())
    return fetch


def pretrained_weights_path(model: str, tag: str, display: str) -> str:
    """The local file of open_clip's `tag` weights for `model`: from the Hugging Face cache (for tags hosted on
    the hub), open_clip's URL download folder, or downloaded; the resolver's WeightsNotFoundError, within
    seconds, when none has it and the network is off or unreachable."""
    cfg = pretrained_cfg(model, tag)
    if cfg.get('file'):
        return cfg['file']
    hf_hub, url = cfg.get('hf_hub', ''), cfg.get('url', '')
    sources = []
    if hf_hub:
        repo, names = _hf_candidates(hf_hub)
        sources.append(HubFile(repo, tuple(names)))
    if url:
        sources.append(UrlFile(url, folder=url_cache_dir(), fetch=_url_download(url)))
    if not sources:
        raise WeightsNotFoundError(f'{display!r}: open_clip lists no file for pretrained tag {tag!r} of {model!r}. '
                                   f"Pass a weights file as model_options={{'pretrained': '/path/to/file'}} or use "
                                   f"model_options={{'pretrained': False}}.")
    example = os.path.basename(url) if url else _hf_candidates(hf_hub)[1][0]
    return find_weights(display, sources, example=example, detail=f'open_clip {model!r}, pretrained {tag!r}',
                        name_hint=f"'{PREFIX}:{model}:/path/to/{example}'")


def _hf_text_sources(cfg: dict[str, Any]) -> list[str]:
    text_cfg = cfg.get('text_cfg', {})
    return list(dict.fromkeys(n for n in (text_cfg.get('hf_model_name'), text_cfg.get('hf_tokenizer_name')) if n))


def check_hf_text_available(cfg: dict[str, Any], model: str, display: str) -> None:
    """Raise WeightsNotFoundError within seconds when a Hugging Face text tower's files are out of reach.

    An HF text tower (``hf_model_name`` / ``hf_tokenizer_name``) needs the HF model's config and tokenizer
    even for random weights; a local directory always works, a hub id needs the HF cache or the network.
    """
    missing = [name for name in _hf_text_sources(cfg) if not os.path.isdir(name) and not cached_file(name, 'config.json')]
    if not missing:
        return
    reason = network_problem(HUB_URL)
    if reason is None:
        return  # transformers downloads them
    raise weights_not_found(
        display, [HubFile(name, ('config.json',)) for name in missing], reason, what='the text tower files',
        detail=f'open_clip {model!r}, whose text tower is the Hugging Face model {missing[0]!r}', path_option=False,
        name_hint='register an open_clip model config whose hf_model_name / hf_tokenizer_name is a local directory '
                  '(open_clip.add_model_config)', random_way=' (these files are needed for random weights too)')


def _read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors / torch file, or from OpenAI's TorchScript archives (``ViT-B-32.pt``)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            torchscript = any(n.endswith('constants.pkl') for n in archive.namelist())
        if torchscript:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore', FutureWarning)  # torch.jit.load is deprecated, still works
                    state = torch.jit.load(path, map_location='cpu').state_dict()
            except Exception as exc:  # noqa: BLE001
                raise WeightsLoadError(f'could not read the TorchScript archive {path!r}: {exc}') from exc
            return {k: v for k, v in state.items() if k not in ('input_resolution', 'context_length', 'vocab_size')}
    state = load_state_dict(path)
    if state and all(k.startswith('module.') for k in state):  # saved from DistributedDataParallel
        state = {k[len('module.'):]: v for k, v in state.items()}
    return state


#: our own module paths -> open_clip's, so a saved finetune model (torch.save(model.state_dict())) loads too
_FINETUNE_LAYOUT = (('towers.text.backbone.text.', 'text.'), ('towers.image.backbone.visual.', 'visual.'),
                    ('backbone.text.', 'text.'), ('backbone.visual.', 'visual.'))


def to_openclip_layout(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Bring a state dict into the layout of `model` (an open_clip model with ``text`` and ``visual``).

    Accepts open_clip's own checkpoints (old CLIP layout included), third-party layouts open_clip converts,
    and state dicts of finetune models built by this plugin.
    """
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed
    if any(k.startswith(('towers.', 'backbone.')) for k in state):
        renamed = {}
        for key, value in state.items():
            for ours, theirs in _FINETUNE_LAYOUT:
                if key.startswith(ours):
                    key = theirs + key[len(ours):]
                    break
            renamed[key] = value
        state = renamed
    state = convert_state_dict(model, dict(state))
    if 'positional_embedding' in state and not hasattr(model, 'positional_embedding'):
        state = convert_to_custom_text_state_dict(state)
    for key in ('logit_scale', 'logit_bias'):
        own = getattr(model, key, None)
        if key in state and own is not None and state[key].shape != own.shape and state[key].numel() == own.numel():
            state[key] = state[key].reshape(own.shape)
    if getattr(model, 'logit_bias', None) is not None and 'logit_bias' not in state and 'logit_scale' in state:
        state['logit_bias'] = torch.zeros_like(state['logit_scale'])
    own_keys = set(model.state_dict())
    # buffers the model rebuilds itself (causal masks, HF position ids) may come in a file: TorchScript
    # archives such as OpenAI's keep them, older transformers saved position_ids
    rebuilt = {n for n, _ in model.named_buffers()} - own_keys
    for key in [k for k in state if k not in own_keys and (k in rebuilt or 'text.' + k in rebuilt
                                                           or k.endswith('embeddings.position_ids'))]:
        del state[key]
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    return state


def load_weights(model: nn.Module, path: str, display: str, tower: str | None) -> None:
    """Load the weights file at `path` into the open_clip `model` (only the parts `tower` needs, if given).

    Raises WeightsLoadError naming the missing, unexpected or differently shaped tensors.
    """
    state = to_openclip_layout(_read_checkpoint(path), model)
    if tower is None:
        load_into(model, state, path, display)
        return
    sub = 'text' if tower == 'text' else 'visual'
    part = {k[len(sub) + 1:]: v for k, v in state.items() if k.startswith(sub + '.')}
    load_into(getattr(model, sub), part, path, f'{display}[{tower}]')


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


# ---------------------------------------------------------------- building

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


# ---------------------------------------------------------------- specs

def _architecture(cfg: dict[str, Any]) -> str:
    vision = cfg.get('vision_cfg', {})
    timm_name = str(vision.get('timm_model_name', ''))
    if isinstance(vision.get('layers'), (list, tuple)) or any(k in timm_name for k in ('resnet', 'convnext',
                                                                                       'efficientnet')):
        return 'cnn+transformer'
    return 'transformer'


def _spec(name: str, model: str, tag: str | None, output_dim: int, description: str, preprocess: dict[str, Any],
          architecture: str = 'transformer', weights_file: str | None = None,
          alias_of: str | None = None, default_for: tuple[str, ...] = ()) -> BackboneSpec:
    defaults: dict[str, Any] = {}
    if weights_file is not None:
        defaults['pretrained'] = weights_file
    elif tag is None:
        defaults['pretrained'] = False
    return BackboneSpec(
        name=name,
        tasks=(TASK,),
        default_for=default_for,
        modality='text+image',
        architecture=architecture,
        output_dim=output_dim,
        description=description,
        build=functools.partial(build, model, tag, name),
        options=(TOWER_OPTION, QUICK_GELU_OPTION),
        preprocess_options=image_preprocess_options(**preprocess),
        defaults=defaults,
        alias_of=alias_of,
        pooler_note=POOLER_NOTE,
        layout=None,
    )


def resolve(prefix: str, rest: str) -> BackboneSpec:
    """The spec of ``openclip:<model>``, ``openclip:<model>:<tag>`` or ``openclip:<model>:<weights file>``."""
    model, sep, weights = rest.partition(':')
    if not model:
        raise UnknownModelError(f"'{prefix}:' needs an open_clip model name, e.g. '{prefix}:ViT-B-32'. See "
                                f"finetune.list_models('{prefix}:*').")
    cfg = model_config(model)
    tags = pretrained_tags(model)
    tag, weights_file = (tags[0] if tags else None), None
    if sep and weights:
        if clean_tag(weights) in tags:
            tag = clean_tag(weights)
        elif os.path.isfile(weights):
            tag, weights_file = None, weights
        else:
            known = ', '.join(tags) if tags else 'none'
            raise UnknownModelError(
                f'{prefix}:{rest}: {weights!r} is neither a pretrained tag of open_clip {model!r} nor an existing '
                f'weights file.{did_you_mean(weights, tags)} Tags of {model}: {known}.')
    if weights_file is not None:
        what = f'weights from {weights_file}'
    elif tag is None:
        what = 'no pretrained weights in open_clip (random init unless a weights file is given)'
    elif sep or len(tags) == 1:
        what = f'pretrained {tag!r}'
    else:
        what = (f"pretrained {tag!r} (its first tag; {len(tags) - 1} more: "
                f"finetune.list_models('{prefix}:{model}:*'))")
    return _spec(f'{prefix}:{rest}', model, tag, int(cfg['embed_dim']), f'open_clip {model}, {what}',
                 live_preprocess_defaults(model, tag), _architecture(cfg), weights_file)


def list_prefixed(prefix: str, pattern: str) -> list[str]:
    """``openclip:<model>`` and ``openclip:<model>:<tag>`` names matching the wildcard `pattern`."""
    oc = _open_clip()
    models = oc.list_models()
    known = set(models)
    names = models + [f'{m}:{t}' for m, t in oc.list_pretrained() if m in known]
    return [f'{PREFIX}:{n}' for n in names if fnmatch.fnmatchcase(n, pattern)]


def specs() -> list[BackboneSpec]:
    """The named CLIP models, from the static table (no import of open_clip)."""
    return [_spec(name, model, tag, dim, description, KNOWN_PREPROCESS[name], alias_of=f'{PREFIX}:{model}:{tag}',
                  default_for=(TASK,) if name == 'clip-base-en' else ())
            for name, (model, tag, dim, description) in NAMED.items()]


def artifact_safe(prefix: str, rest: str) -> bool:
    """``<model>`` or ``<model>:<tag>`` of open_clip's own tables (no weights file)."""
    model, _, tag = rest.partition(':')
    if any(c in rest for c in '/\\') or model not in _open_clip().list_models():
        return False
    return not tag or clean_tag(tag) in pretrained_tags(model)


plugin = BackbonePlugin(
    name='openclip', specs=specs, prefixes=(PREFIX,), resolve=resolve, list_prefixed=list_prefixed,
    prefix_tasks={PREFIX: (TASK,)}, artifact_safe=artifact_safe, offline_envs=OFFLINE_ENVS,
    note=(f"every open_clip model as {PREFIX}:<model>[:<tag or weights file>] ({TASK}); list them with "
          f"finetune.list_models('{PREFIX}:*')"),
)

__all__ = ['plugin', 'build', 'resolve', 'list_prefixed', 'specs', 'TextTower', 'ImageTower', 'NAMED',
           'KNOWN_PRETRAINED', 'KNOWN_PREPROCESS', 'live_preprocess_defaults', 'pretrained_weights_path',
           'check_hf_text_available', 'create_openclip', 'load_weights', 'openclip_state_dict',
           'to_openclip_layout', 'url_cache_dir', 'model_config', 'pretrained_tags']
