"""Modalities (finetune/modalities.py): the core's text and image, and those plugins declare, here by a fake
plugin defined in the test."""
from __future__ import annotations

import numpy as np
import pytest

import finetune
from finetune.data import load_data
from finetune.modalities import Modality, file_extensions, is_one_item, item_modality, task_of
from finetune.registry import REGISTRY, BackbonePlugin


@pytest.fixture
def sound_plugin():
    """A plugin adding a 'sound' modality (.wav files, 1-D float arrays) and its task."""
    sound = Modality('sound', ('.wav', '.flac'), recognize=lambda x: isinstance(x, np.ndarray) and x.ndim == 1,
                     one_item=lambda x: isinstance(x, (str, np.ndarray)), description='sound files or waveforms')
    REGISTRY.add_plugin(BackbonePlugin(name='sound-test', specs=lambda: [], tasks=('sound-to-sound',),
                                       modalities=(sound,)))
    yield sound
    REGISTRY.reload()


def test_the_core_knows_text_and_images_only():
    assert item_modality('a sentence') == 'text' and item_modality('cat.PNG') == 'image'
    assert item_modality(np.zeros((8, 8, 3))) == 'image'
    assert '.jpg' in file_extensions()
    assert task_of(('text', 'image')) == 'text-to-image' and task_of(('image',)) == 'image-to-image'


def test_a_plugin_declares_a_modality_and_its_task(sound_plugin, tmp_path):
    assert item_modality('song.WAV') == 'sound' and item_modality(np.zeros(16000)) == 'sound'
    assert '.flac' in file_extensions() and 'sound-to-sound' in finetune.TASKS
    assert is_one_item('song.wav', 'sound') and is_one_item(np.zeros(10), 'sound')
    for label in ('dog', 'cat'):
        (tmp_path / label).mkdir()
        for i in range(2):
            (tmp_path / label / f'{i}.wav').write_bytes(b'RIFF')
    data = load_data(str(tmp_path))  # a class-folder layout of the new modality's files
    assert data.kind == 'labeled' and data.modalities == ('sound',) and len(data) == 4
    csv = tmp_path / 'rows.csv'
    csv.write_text('item,label\ndog/0.wav,dog\ndog/1.wav,dog\n')
    assert load_data(str(csv)).a[0] == str(tmp_path / 'dog' / '0.wav')  # its relative paths are resolved


def test_numpy_arrays_of_texts_are_texts_and_numeric_arrays_stay_images():
    texts = ['a red dog', 'cat', 'the old house by the sea']
    model = finetune.build_model('fake-text')
    expected = model.encode(texts)
    for array in (np.array(texts), np.array(texts, dtype=object)):
        np.testing.assert_allclose(finetune.encode(model, array), expected, atol=1e-6)
    np.testing.assert_allclose(model.encode(np.array(texts[1])), expected[1:2], atol=1e-6)
    assert finetune.build_model('fake-clip').encode(np.array(texts)).shape[0] == 3
    image = finetune.build_model('fake-image')
    assert image.encode(np.zeros((8, 8, 3), dtype=np.uint8)).shape[0] == 1  # a numeric array is one image
    with pytest.raises(finetune.errors.InputError, match=r'items: a 2-D array of shape \(1, 3\); expected '
                                                         r'one item per element'):
        model.encode(np.array([texts]))
