"""Files of the Hugging Face hub as weight sources for finetune's resolver (:mod:`finetune.hub`), and what the
families' models share beyond their files: gradient checkpointing of transformers models, the names LoRA targets.

Not a plugin: a small library the families whose weights live on the hub (timm, open_clip, transformers)
share, so that the hub's cache is looked up, and its files downloaded, in one place.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from finetune.hub import WeightSource

HUB_URL = 'https://huggingface.co'
#: the hub libraries' own 'no network' switches, declared by the plugins that use the hub
OFFLINE_ENVS = ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE')


def linear_names(model) -> set[str]:
    """The last component of the names of the Linear layers in `model` (``'q_proj'``, ``'qkv'``, ...), those that
    LoRA adapters already wrap included: what a family's default LoRA targets are picked from."""
    from torch import nn
    return {name.rpartition('.')[2] for name, module in model.named_modules()
            if isinstance(module, nn.Linear) or isinstance(getattr(module, 'base_layer', None), nn.Linear)}


def enable_checkpointing(model) -> bool:
    """Turn on non-reentrant gradient checkpointing in the transformers `model` (a ``PreTrainedModel``, or a module
    of one, such as a CLIP tower in older transformers): its layers recompute their activations in the backward
    pass, which works when the model's own weights are frozen and only adapters train. Returns False where the
    model has no layer that can."""
    kwargs = {'use_reentrant': False}
    if getattr(model, 'supports_gradient_checkpointing', False):
        if hasattr(model, 'activation_checkpointing_enable'):  # transformers 5 (gradient_checkpointing_enable warns)
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        return True
    import functools

    from torch.utils.checkpoint import checkpoint
    # transformers' convention since 4.35: a layer stack checks `gradient_checkpointing` and calls
    # `_gradient_checkpointing_func` (what PreTrainedModel sets for its own modules)
    layers = [m for m in model.modules() if hasattr(m, 'gradient_checkpointing')]
    for layer in layers:
        layer._gradient_checkpointing_func = functools.partial(checkpoint, **kwargs)
        layer.gradient_checkpointing = True
    return bool(layers)


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder, read from the environment at call time."""
    env = os.environ.get('HF_HUB_CACHE') or os.environ.get('HUGGINGFACE_HUB_CACHE')
    if env:
        return os.path.expanduser(env)
    if os.environ.get('HF_HOME'):
        return os.path.join(os.path.expanduser(os.environ['HF_HOME']), 'hub')
    from huggingface_hub import constants
    return constants.HF_HUB_CACHE


def cached_file(repo: str, filename: str, cache_dir: str | None = None) -> str | None:
    """The path of `filename` of hub repo `repo` in the cache, or None (also for an invalid repo id)."""
    from huggingface_hub import try_to_load_from_cache
    try:
        hit = try_to_load_from_cache(repo, filename, cache_dir=cache_dir or hub_cache_dir())
    except ValueError:  # not a valid hub id (e.g. a local path that does not exist)
        return None
    return hit if isinstance(hit, str) and os.path.isfile(hit) else None


@dataclass(frozen=True)
class HubFile(WeightSource):
    """The first of `filenames` that repo `repo` of the hub has, from the cache or downloaded into it."""

    repo: str
    filenames: tuple[str, ...] = ('model.safetensors',)
    cache_dir: str | None = None

    @property
    def what(self) -> str:
        return f'{" or ".join(self.filenames)} of the Hugging Face repo {self.repo}'

    @property
    def where(self) -> str:
        return f'{self.cache_dir or hub_cache_dir()} (Hugging Face cache)'

    @property
    def host(self) -> str:
        return HUB_URL

    @property
    def hint(self) -> str:
        return (f'on a machine with a network: huggingface-cli download {self.repo} {self.filenames[0]}, then copy '
                f'the cache')

    @property
    def file(self) -> str:
        return self.filenames[0]

    def local(self) -> str | None:
        for filename in self.filenames:
            hit = cached_file(self.repo, filename, self.cache_dir)
            if hit:
                return hit
        return None

    def download(self) -> str:
        from huggingface_hub import hf_hub_download
        error: Exception | None = None
        for filename in self.filenames:
            try:
                return hf_hub_download(self.repo, filename, cache_dir=self.cache_dir or hub_cache_dir())
            except Exception as exc:  # noqa: BLE001 - the next name may exist
                error = exc
        raise error or FileNotFoundError(self.repo)
