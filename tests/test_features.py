"""The frozen-feature cache (finetune/training/features.py): same training as without it, in memory or on disk,
and off, with its reason, wherever the backbone's output could change between epochs."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

import finetune
from finetune.backbone import Backbone, Features
from finetune.errors import OptionError
from finetune.training.feature_store import FeatureStore, MemoryBudget
from fake_plugin import FakeText
from test_training import coloured_squares, nan_on_call, text_pairs

TEXTS = ['the red dog', 'a big old green car is fast', 'sea']
FROZEN_TEXT = {'freeze': True, 'pooler': 'GeM', 'output_dim': 8, 'head_options': {'dropout': 0.2}}


def _fit(model, data, **kwargs):
    logs = []
    settings = dict(epochs=3, batch_size=8, learning_rate=1e-2, seed=0, num_workers=0, log=logs.append)
    settings.update(kwargs)
    run = finetune.fit(model, data, **settings)
    return run, [line for line in logs if 'feature cache' in line]


def _trained(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if '.backbone.' not in f'.{k}'}


def _assert_same_training(cached, uncached, items):
    a, b = _trained(cached.model), _trained(uncached.model)
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    np.testing.assert_allclose(cached.model.encode(items), uncached.model.encode(items), rtol=1e-5, atol=1e-6)
    assert [h['loss'] for h in cached.history if 'loss' in h] == pytest.approx(
        [h['loss'] for h in uncached.history if 'loss' in h], rel=1e-5)


def test_text_with_a_frozen_backbone_trains_the_same_on_cached_features():
    """Token sequences of different lengths, a head with dropout (the random stream is the uncached run's) and
    a backbone with dropout (off when frozen whole, cached or not)."""
    data = text_pairs()
    cached, said = _fit('fake-text', data, model_options=FROZEN_TEXT, eval_data=data, progress=True)
    uncached, said_off = _fit('fake-text', data, model_options=FROZEN_TEXT, eval_data=data, feature_cache=False)
    assert cached.metrics['after'] == pytest.approx(uncached.metrics['after'], rel=1e-5)
    assert len(said) == 1 and said[0].startswith('feature cache on: 48 items') and 'in memory' in said[0]
    assert said_off == ['feature cache off: feature_cache=False']
    _assert_same_training(cached, uncached, TEXTS)
    assert not torch.equal(cached.model.pooler.p.detach(), finetune.build_model(
        'fake-text', FROZEN_TEXT).pooler.p.detach())  # it did train


def test_a_frozen_backbone_stays_in_eval_mode_in_training():
    model = finetune.build_model('fake-text', {'freeze': True}).train()
    assert model.training and not model.backbone.training and not model.backbone.dropout.training
    partly = finetune.build_model('fake-text', {'freeze': ['embed']}).train()
    assert partly.backbone.dropout.training


def test_images_with_a_classifier_loss_in_memory_and_spilled_to_disk(tmp_path):
    data = coloured_squares(n_per_class=4)
    options = {'freeze': True, 'pooler': 'GeM', 'output_dim': 8}
    common = dict(model_options=options, loss='NormalizedSoftmaxLoss', learning_rate=1e-3)
    uncached, _ = _fit('fake-image', data, feature_cache=False, **common)
    in_memory, said = _fit('fake-image', data, num_workers=1, **common)  # features computed in a worker
    assert 'in memory' in said[0] and 'on disk' not in said[0]
    seen = []

    class Watch(finetune.callbacks.Callback):
        def on_epoch_end(self, state):
            seen.append(sorted(os.listdir(tmp_path / 'out' / 'feature-cache')))

    spilled, said = _fit('fake-image', data, output_dir=str(tmp_path / 'out'), callbacks=[Watch()],
                         feature_cache={'max_memory_mb': 0}, **common)
    assert 'on disk in ' + str(tmp_path / 'out' / 'feature-cache') in said[0]
    assert seen and seen[0] == ['process0-model0.bin']
    assert not (tmp_path / 'out' / 'feature-cache').exists()  # removed when training ended
    images = [row[0] for row in data[:3]]
    _assert_same_training(in_memory, uncached, images)
    _assert_same_training(spilled, in_memory, images)


def test_over_the_budget_without_output_dir_trains_uncached_and_says_why():
    data = text_pairs()
    run, said = _fit('fake-text', data, model_options=FROZEN_TEXT, feature_cache={'max_memory_mb': 0})
    assert len(said) == 1 and re.fullmatch(
        r"feature cache off: the features of 48 items need about [\d.]+ KiB, more than the memory budget \(0 B, "
        r"feature_cache=\{'max_memory_mb': N\}\), and there is no output_dir to keep the rest in; training goes "
        r"on uncached", said[0]), said
    uncached, _ = _fit('fake-text', data, model_options=FROZEN_TEXT, feature_cache=False)
    _assert_same_training(run, uncached, TEXTS)


def test_two_frozen_towers_are_cached_and_the_temperature_still_trains():
    rng = np.random.default_rng(0)
    colours = {'red': (220, 30, 30), 'green': (30, 200, 40), 'blue': (30, 40, 220)}
    rows = [(f'a {name} car', np.clip(rng.normal(0, 20, (16, 16, 3)) + rgb, 0, 255).astype(np.uint8))
            for name, rgb in colours.items() for _ in range(4)]
    options = {'freeze': True, 'output_dim': 8}
    cached, said = _fit('fake-clip', rows, model_options=options, batch_size=3)
    uncached, _ = _fit('fake-clip', rows, model_options=options, batch_size=3, feature_cache=False)
    assert said[0].startswith('feature cache on: 15 items')  # 3 distinct texts, 12 images
    start = float(finetune.build_model('fake-clip').logit_scale.detach())
    assert float(cached.model.logit_scale.detach()) != pytest.approx(start)
    _assert_same_training(cached, uncached, ['a red car'])


def test_resuming_builds_the_cache_again_and_ends_where_the_run_would_have(tmp_path):
    data = text_pairs()
    whole, _ = _fit('fake-text', data, model_options=FROZEN_TEXT, output_dir=str(tmp_path / 'whole'))
    checkpoint = tmp_path / 'whole' / 'checkpoint-6'  # the end of the first of three epochs
    assert checkpoint.is_dir()
    resumed, said = _fit(None, data, resume_from=str(checkpoint))
    assert said[0].startswith('feature cache on')
    _assert_same_training(resumed, whole, TEXTS)


def test_off_with_the_reason_when_the_backbone_trains_or_augments_or_one_epoch(monkeypatch):
    data = text_pairs()
    _, said = _fit('fake-text', data, epochs=1)
    assert said == ["feature cache off: the backbone of 'fake-text' trains (3 parameter tensors, e.g. "
                    "'embed.weight'); features are cached for a backbone frozen whole (model_options={'freeze': "
                    "True})"]
    _, said = _fit('fake-text', data, epochs=1, model_options=FROZEN_TEXT)
    assert said == ['feature cache off: one epoch: no features would be read twice (feature_cache=True caches '
                    'anyway)']
    _, said = _fit('fake-text', data, epochs=1, model_options=FROZEN_TEXT, feature_cache=True)
    assert said[0].startswith('feature cache on')
    monkeypatch.setattr(FakeText, 'preprocess_train', lambda self, items: self.preprocess(items))
    _, said = _fit('fake-text', data, epochs=2, model_options=FROZEN_TEXT)
    assert said == ["feature cache off: 'fake-text' draws random training views (its preprocess_train augments or "
                    "samples afresh), so an item's features differ every epoch"]
    with pytest.raises(OptionError, match=r"feature_cache=True: 'fake-text' draws random training views.*False"):
        _fit('fake-text', data, epochs=2, model_options=FROZEN_TEXT, feature_cache=True)


def test_a_family_says_whether_it_augments():
    class Plain(Backbone):
        pass

    class Augmenting(Backbone):
        def preprocess_train(self, items):
            return self.preprocess(items)

    class AugmentationOff(Augmenting):
        def augments_in_training(self):
            return False

    assert not Plain().augments_in_training() and Augmenting().augments_in_training()
    assert not AugmentationOff().augments_in_training()


@pytest.mark.parametrize('value, message', [
    ('yes', r"feature_cache: expected 'auto'.*got 'yes'\. Choices: 'auto', True, False, or a dict"),
    (1, r"feature_cache: expected 'auto'.*got 1\."),
    ({'max_memory': 10}, r"feature_cache: unknown setting\(s\) 'max_memory'.*Settings: max_memory_mb"),
    ({'max_memory_mb': -1}, r"'max_memory_mb' must be a number >= 0.*got -1"),
])
def test_bad_feature_cache_values_are_clear_errors(value, message):
    with pytest.raises(OptionError, match=message):
        finetune.fit('fake-text', text_pairs(), feature_cache=value, log=lambda m: None)


def test_the_store_pads_token_sequences_again_and_reads_the_same_from_disk(tmp_path):
    tensor = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    memory = FeatureStore(MemoryBudget(10 ** 6), None)
    disk = FeatureStore(MemoryBudget(0), str(tmp_path / 'store.bin'))
    for store in (memory, disk):
        store.add_batch(Features(tensor, mask), 3)
        store.finish_writing()
    assert memory.memory_bytes == disk.disk_bytes == (2 + 5 + 1) * 4 * 4 + (2 + 5 + 1) * 8
    for store in (memory, disk):
        batch = store.batch([2, 0])
        assert batch.tensor.shape == (2, 2, 4) and batch.mask.tolist() == [[1, 0], [1, 1]]
        torch.testing.assert_close(batch.tensor[0, :1], tensor[2, :1])
        assert torch.equal(batch.tensor[0, 1], torch.zeros(4)) and batch.mask.dtype == mask.dtype
        torch.testing.assert_close(store.batch([0, 1, 2]).tensor[1], tensor[1])
    disk.close()
    assert not (tmp_path / 'store.bin').exists()
    maps = FeatureStore(MemoryBudget(10 ** 6), None)
    maps.add_batch(Features(torch.randn(2, 3, 2, 2).to(torch.bfloat16)), 2)
    assert maps.batch([1, 0]).tensor.dtype == torch.bfloat16 and maps.batch([1]).mask is None


def test_a_nan_loss_on_cached_features_stops_and_keeps_the_last_good_model(tmp_path, monkeypatch):
    from finetune.training import TrainingError
    nan_on_call(monkeypatch, 3)
    with pytest.raises(TrainingError, match=r'NaN or infinite at epoch 1, step 3.*last-good'):
        _fit('fake-text', text_pairs(), model_options=FROZEN_TEXT, output_dir=str(tmp_path),
             feature_cache={'max_memory_mb': 0})  # on disk: its files go even when training fails
    saved = finetune.load(str(tmp_path / 'last-good'))
    assert np.isfinite(saved.encode(TEXTS)).all()
    assert not (tmp_path / 'feature-cache').exists()


def test_gradcache_chunks_cached_features_too():
    """mini_batch_size with a frozen backbone: the chunks are cut from the cached Features (tensor and mask)
    and the run trains as without the cache."""
    data = text_pairs()
    options = dict(model_options=FROZEN_TEXT, loss_options={'mini_batch_size': 3})
    cached, said = _fit('fake-text', data, **options)
    uncached, _ = _fit('fake-text', data, feature_cache=False, **options)
    assert said[0].startswith('feature cache on')
    _assert_same_training(cached, uncached, TEXTS)
