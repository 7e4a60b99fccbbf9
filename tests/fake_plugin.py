"""A small fake model family for the core's tests, registered through an entry point like any plugin (see
conftest.py), so that a broken real family never breaks a core test.

* ``fake-text``: a word-level embedding (with dropout) over a fixed vocabulary, token features with a mask;
* ``fake-image``: a small ResNet-shaped network (BatchNorm throughout) on 16x16 images, map features;
* ``fake-clip``: both as the towers of one model, embedding into one 16-dim space, with a learned temperature;
* ``fakefile:<folder>``: ``fake-text`` configured by the ``fake.json`` in a folder, as a family whose architecture
  lives in files does (a saved model writes that file into the artifact and names it ``fakefile:./backbone``).

Everything is random-initialised, builds in milliseconds and trains in seconds on a CPU.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
from typing import Any, Sequence

import torch
from torch import nn

from finetune.backbone import MAP, TOKENS, Backbone, Features, Towers
from finetune.cross_encoders import CrossEncoder
from finetune.errors import InputError, UnknownModelError
from finetune.options import Option, positive_int
from finetune.preprocessing import ImagePreprocessor, check_image_batch, image_preprocess_options
from finetune.registry import BackbonePlugin, BackboneSpec

WORDS = ('the a man woman dog cat is are eating eats food bread plays piano guitar runs fast slow red blue green '
         'house car tree sky sea big small old new happy sad').split()
VOCAB = {w: i for i, w in enumerate(['[PAD]', '[UNK]', *WORDS])}
IMAGE_SIZE = 16


class FakeText(Backbone):
    """Word embeddings -> dropout -> Linear + tanh per token; the masked mean is its own pooling."""

    modality = 'text'
    layout = TOKENS
    default_learning_rate = 1e-3
    packages = ()

    def __init__(self, dim: int = 32, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.mix = nn.Linear(dim, dim)
        self.own_dim = self.pooled_dim = dim

    def forward(self, batch: dict) -> Features:
        tokens = torch.tanh(self.mix(self.dropout(self.embed(batch['input_ids']))))
        return Features(tokens, batch['attention_mask'])

    def pool_own(self, features: Features) -> torch.Tensor:
        mask = features.mask.unsqueeze(-1).to(features.tensor.dtype)
        return (features.tensor * mask).sum(1) / mask.sum(1).clamp(min=1)

    def preprocess(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        bad = next((i for i, item in enumerate(items) if not isinstance(item, str)), None)
        if bad is not None:
            raise InputError(f'item {bad}: fake-text takes strings, got {type(items[bad]).__name__}.')
        ids = [[VOCAB.get(w, 1) for w in re.findall(r'\w+', text.lower())] or [1] for text in items]
        length = max(len(row) for row in ids)
        input_ids = torch.zeros(len(ids), length, dtype=torch.long)
        mask = torch.zeros(len(ids), length, dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        return {'input_ids': input_ids, 'attention_mask': mask}

    def join_batches(self, batches):
        """Token batches as one, padded (with 0, on the right) to the longest: the core embeds the sides of a
        training step together."""
        if not all(isinstance(b, dict) and set(b) == {'input_ids', 'attention_mask'} for b in batches):
            return None
        length = max(b['input_ids'].shape[1] for b in batches)
        return {k: torch.cat([nn.functional.pad(b[k], (0, length - b[k].shape[1])) for b in batches])
                for k in ('input_ids', 'attention_mask')}

    def check_batch(self, batch: Any) -> None:
        if not isinstance(batch, dict) or 'input_ids' not in batch:
            raise InputError('fake-text expects a tokenized batch (a dict with input_ids); use encode(texts).')

    def export(self, directory: str) -> str | None:
        """Models built from a folder write theirs into the artifact and are rebuilt from it."""
        if not getattr(self, 'from_folder', False):
            return None
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, 'fake.json'), 'w') as f:
            json.dump({'dim': self.own_dim}, f)
        return 'fakefile:./backbone'


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn1(self.conv1(x)))


class FakeImage(Backbone):
    """A small ResNet-shaped network (conv1, bn1, layer1..layer4 of one block each, BatchNorm throughout);
    the spatial mean is its own pooling."""

    modality = 'image'
    layout = MAP
    default_learning_rate = 1e-3

    def __init__(self, dim: int = 16, image_size: int = IMAGE_SIZE, resize_size: int | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1, self.layer2 = nn.Sequential(_Block(8, 8)), nn.Sequential(_Block(8, 8))
        self.layer3, self.layer4 = nn.Sequential(_Block(8, dim)), nn.Sequential(_Block(dim, dim))
        self.image_size = image_size
        self.preprocessor = ImagePreprocessor(image_size=image_size, resize_size=resize_size or image_size)
        self.own_dim = self.pooled_dim = dim

    def forward(self, batch: torch.Tensor) -> Features:
        x = torch.relu(self.bn1(self.conv1(batch)))
        return Features(self.layer4(self.layer3(self.layer2(self.layer1(x)))))

    def pool_own(self, features: Features) -> torch.Tensor:
        return features.tensor.mean(dim=(2, 3))

    def preprocess(self, items: Sequence[Any]) -> torch.Tensor:
        return self.preprocessor(items)

    def check_batch(self, batch: Any) -> None:
        check_image_batch(batch, 'fake-image', self.image_size)


def _load(backbone: nn.Module, options: dict[str, Any]) -> nn.Module:
    if isinstance(options['pretrained'], str):
        from finetune.weights import load_into, load_state_dict
        load_into(backbone, load_state_dict(options['pretrained']), options['pretrained'], 'fake')
    return backbone


def build_text(options: dict[str, Any]) -> FakeText:
    return _load(FakeText(options['dim']), options)


def build_image(options: dict[str, Any]) -> FakeImage:
    pre = options['preprocess_options']
    return _load(FakeImage(image_size=pre['image_size'], resize_size=pre['resize_size']), options)


def build_from_folder(folder: str, options: dict[str, Any]) -> FakeText:
    with open(os.path.join(folder, 'fake.json')) as f:
        backbone = FakeText(int(json.load(f)['dim']))
    backbone.from_folder = True
    return _load(backbone, options)


def resolve(prefix: str, rest: str) -> BackboneSpec:
    """``fakefile:<folder>``: a folder holding fake.json."""
    folder = os.path.expanduser(rest)
    if not os.path.isfile(os.path.join(folder, 'fake.json')):
        raise UnknownModelError(f'fakefile:{rest}: no fake.json in {folder!r}.')
    return BackboneSpec(name=f'fakefile:{rest}', tasks=('text-to-text',), modality='text', architecture='bag of words',
                        output_dim=None, build=functools.partial(build_from_folder, folder),
                        description=f'fake-text from {folder}', defaults={'pretrained': False}, layout=TOKENS)


def build_clip(options: dict[str, Any]) -> Towers:
    return Towers({'text': FakeText(16, dropout=0.0), 'image': FakeImage(16)}, logit_scale=math.log(1 / 0.07))


DIM_OPTION = Option('dim', 'int', 32, 'embedding width', positive_int())


def specs() -> list[BackboneSpec]:
    common = dict(defaults={'pretrained': False}, description='a fake model of the tests')
    return [
        BackboneSpec(name='fake-text', tasks=('text-to-text',), modality='text', architecture='bag of words',
                     output_dim=32, build=build_text, options=(DIM_OPTION,), layout=TOKENS,
                     dims=lambda o: (o.get('dim', 32), o.get('dim', 32)), **common),
        BackboneSpec(name='fake-image', tasks=('image-to-image',), modality='image', architecture='cnn',
                     output_dim=16, build=build_image, layout=MAP,
                     preprocess_options=image_preprocess_options(IMAGE_SIZE, IMAGE_SIZE), **common),
        BackboneSpec(name='fake-base', tasks=('text-to-text',), modality='text', architecture='bag of words',
                     output_dim=32, build=build_text, options=(DIM_OPTION,), layout=TOKENS, alias_of='fake-text',
                     dims=lambda o: (o.get('dim', 32), o.get('dim', 32)), **common),
        BackboneSpec(name='fake-clip', tasks=('text-to-image',), modality='text+image', architecture='two towers',
                     output_dim=16, build=build_clip, layout=None, **common),
    ]


plugin = BackbonePlugin(name='fake', specs=specs, prefixes=('fakefile',), resolve=resolve,
                        note='the fake family of the tests')


# ---------------------------------------------------------------- a fake cross-encoder
class FakeCrossEncoder(CrossEncoder):
    """Scores a pair by the share of the query's words found in the document (exactly, so tests can predict every
    score); `bias` is a parameter so the model has a device."""

    def __init__(self, name: str = 'fake-cross'):
        super().__init__()
        self.name = name
        self.bias = nn.Parameter(torch.zeros(()))
        self.calls = 0

    def score_batch(self, queries, documents):
        self.calls += 1
        out = []
        for q, d in zip(queries, documents):
            words, seen = set(re.findall(r'\w+', q.lower())), set(re.findall(r'\w+', d.lower()))
            out.append(len(words & seen) / max(1, len(words)))
        return torch.tensor(out) + self.bias


def cross_encoder_specs() -> list[BackboneSpec]:
    return [BackboneSpec(name='fake-cross', tasks=('cross-encoding',), modality='text', architecture='word overlap',
                         output_dim=1, description='a fake cross-encoder of the tests',
                         build=lambda options: FakeCrossEncoder())]


cross_encoder_plugin = BackbonePlugin(name='fake', specs=cross_encoder_specs, note='the fake cross-encoder of the tests')
