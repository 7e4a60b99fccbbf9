"""Saved models: nothing in an artifact turns on code execution or leads the loader outside the folder, and a
damaged artifact is answered with the file and the field (finetune/artifacts.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import finetune
from finetune.errors import ArtifactError, FinetuneError

TEXTS = ['the red dog', 'a happy cat', 'the big house']

EVIL_MODULE = '''
import pathlib
pathlib.Path({marker!r}).write_text('planted code ran')
from transformers import BertConfig, BertModel


class EvilConfig(BertConfig):
    pass


class EvilModel(BertModel):
    config_class = EvilConfig
'''


@pytest.fixture
def artifact(tiny_bert_dir, tmp_path):
    model = finetune.build_model(f'hf:{tiny_bert_dir}', {'pretrained': True})
    path = tmp_path / 'artifact'
    finetune.save_model(model, str(path))
    return path, model


def _edit_config(path, **changes) -> dict:
    config_path = path / 'finetune_config.json'
    config = json.loads(config_path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    config_path.write_text(json.dumps(config))
    return config


def _plant_code(path, marker) -> None:
    """What an attacker ships: trust_remote_code in the saved options and an auto_map to their module."""
    backbone = path / 'backbone'
    (backbone / 'evil.py').write_text(EVIL_MODULE.format(marker=str(marker)))
    hf_config = json.loads((backbone / 'config.json').read_text())
    hf_config['auto_map'] = {'AutoConfig': 'evil.EvilConfig', 'AutoModel': 'evil.EvilModel'}
    (backbone / 'config.json').write_text(json.dumps(hf_config))
    config = json.loads((path / 'finetune_config.json').read_text())
    _edit_config(path, model_options=dict(config['model_options'], trust_remote_code=True))


def test_an_artifact_cannot_turn_on_code_execution(artifact, tmp_path, monkeypatch):
    monkeypatch.setenv('HF_MODULES_CACHE', str(tmp_path / 'hf_modules'))
    path, model = artifact
    marker = tmp_path / 'marker'
    _plant_code(path, marker)
    loaded = finetune.load(str(path))
    assert not marker.exists(), 'code planted in the artifact ran on load'
    np.testing.assert_allclose(loaded.encode(TEXTS), model.encode(TEXTS), atol=1e-6)
    assert loaded.options['trust_remote_code'] is False


def test_the_cli_does_not_run_planted_code_either(artifact, tmp_path):
    path, _ = artifact
    marker = tmp_path / 'marker'
    _plant_code(path, marker)
    items = tmp_path / 'items.txt'
    items.write_text('\n'.join(TEXTS))
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / 'hf_modules'))
    done = subprocess.run([sys.executable, '-m', 'finetune.cli', 'encode', '--model', str(path), '--input',
                           str(items), '--output', str(tmp_path / 'e.npy')], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    assert np.load(tmp_path / 'e.npy').shape == (3, 32)


def test_trust_remote_code_is_the_callers_switch(artifact, tmp_path, monkeypatch):
    monkeypatch.setenv('HF_MODULES_CACHE', str(tmp_path / 'hf_modules'))
    path, _ = artifact
    marker = tmp_path / 'marker'
    _plant_code(path, marker)
    _edit_config(path, model_options=dict(json.loads((path / 'finetune_config.json').read_text())['model_options'],
                                          trust_remote_code=False))
    finetune.load(str(path), trust_remote_code=True)  # the caller, not the file, decides
    assert marker.read_text() == 'planted code ran'
    with pytest.raises(ArtifactError, match='trust_remote_code: expected True or False'):
        finetune.load(str(path), trust_remote_code='yes')


@pytest.mark.parametrize('name', ['hf:{outside}', 'hf:./../outside', 'hf:./backbone/../../outside', '{outside}',
                                  'hf:sentence-transformers/all-MiniLM-L6-v2', 'bert-base-cased', 'hf:~/model',
                                  'hf:outside', 'hf:bert-base-uncased', 'nosuchprefix:./backbone'])
def test_a_name_that_leaves_the_artifact_is_refused(artifact, tiny_bert_dir, tmp_path, name, monkeypatch):
    path, _ = artifact
    outside = tmp_path / 'outside'
    outside.symlink_to(tiny_bert_dir)  # a real model there: refusing must not depend on it failing to load
    monkeypatch.chdir(tmp_path)  # 'hf:outside' would be read relative to the working folder
    _edit_config(path, name=name.format(outside=outside))
    with pytest.raises(ArtifactError, match=r"finetune_config.json, field 'name'") as info:
        finetune.load(str(path))
    assert any(w in str(info.value) for w in ('outside', 'neither a registered', 'path', 'no installed plugin'))


def test_a_symlink_inside_the_artifact_that_points_out_is_refused(artifact, tiny_bert_dir, tmp_path):
    path, _ = artifact
    (path / 'elsewhere').symlink_to(tiny_bert_dir)
    _edit_config(path, name='hf:./elsewhere')
    with pytest.raises(ArtifactError, match='outside the artifact folder'):
        finetune.load(str(path))


def test_a_damaged_config_names_the_file_and_the_field(artifact):
    path, _ = artifact
    config_path = path / 'finetune_config.json'
    good = config_path.read_text()
    config_path.write_text(good[:-20])  # truncated JSON
    with pytest.raises(ArtifactError, match=r'finetune_config.json: not valid JSON'):
        finetune.load(str(path))
    config_path.write_text(good)
    _edit_config(path, name=None)
    with pytest.raises(ArtifactError, match=r"field 'name' is missing"):
        finetune.load(str(path))
    config_path.write_text(good)
    _edit_config(path, model_options=['not', 'a', 'dict'])
    with pytest.raises(ArtifactError, match=r"field 'model_options': expected a JSON object"):
        finetune.load(str(path))
    config_path.write_text(good)
    _edit_config(path, name=42)
    with pytest.raises(ArtifactError, match=r"field 'name': expected the registry name"):
        finetune.load(str(path))
    config_path.write_text(good)
    _edit_config(path, model_options=dict(json.loads(good)['model_options'], pooler='nope'))
    with pytest.raises(ArtifactError, match=r"field 'model_options'.*nope"):
        finetune.load(str(path))
    config_path.write_text('[1, 2]')
    with pytest.raises(ArtifactError, match='expected a JSON object'):
        finetune.load(str(path))


def test_the_cli_answers_a_damaged_artifact_in_one_message(artifact, tmp_path):
    path, _ = artifact
    (path / 'finetune_config.json').write_text('{"name": ')
    items = tmp_path / 'items.txt'
    items.write_text('the dog\n')
    done = subprocess.run([sys.executable, '-m', 'finetune.cli', 'encode', '--model', str(path), '--input',
                           str(items), '--output', str(tmp_path / 'e.npy')], capture_output=True, text=True)
    assert done.returncode == 2
    assert 'Traceback' not in done.stderr and 'not valid JSON' in done.stderr
    assert done.stderr.startswith('error: ')


def test_errors_are_finetune_errors_not_json_or_key_errors(artifact):
    path, _ = artifact
    (path / 'finetune_config.json').write_text('{')
    with pytest.raises(FinetuneError) as info:
        finetune.load(str(path))
    assert type(info.value).__name__ == 'ArtifactError'


def test_a_link_or_module_path_inside_backbone_that_points_out_is_refused(artifact, tiny_bert_dir, tmp_path):
    path, _ = artifact
    config = path / 'backbone' / 'config.json'
    config.unlink()
    config.symlink_to(tiny_bert_dir / 'config.json')
    with pytest.raises(ArtifactError, match='is a link to .*outside the artifact folder'):
        finetune.load(str(path))


def test_sentence_transformers_modules_may_not_point_outside(artifact, tiny_bert_dir):
    path, _ = artifact
    (path / 'backbone' / 'modules.json').write_text(json.dumps(
        [{'idx': 0, 'name': '0', 'path': str(tiny_bert_dir), 'type': 'sentence_transformers.models.Transformer'}]))
    with pytest.raises(FinetuneError, match='outside'):
        finetune.load(str(path))


def test_an_incomplete_artifact_is_an_artifact_error(artifact):
    import shutil
    path, _ = artifact
    shutil.rmtree(path / 'backbone')
    with pytest.raises(ArtifactError, match="'./backbone' is missing from the artifact folder"):
        finetune.load(str(path))


def test_a_kill_between_the_renames_of_a_replacement_leaves_a_loadable_model(artifact):
    """save_model replaces an artifact by two renames; between them only '<dir>.old' exists."""
    path, model = artifact
    os.replace(path, str(path) + '.old')
    loaded = finetune.load(str(path))
    np.testing.assert_allclose(loaded.encode(TEXTS), model.encode(TEXTS), atol=1e-6)
    finetune.save_model(model, str(path))  # the next save puts the folder back and drops the copy
    assert path.is_dir() and not os.path.exists(str(path) + '.old')


def test_temporary_folders_of_a_killed_write_are_removed_by_the_next_save(artifact, tmp_path):
    path, model = artifact
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    stale = tmp_path / f'.finetune-{int(dead.stdout)}-abc'
    stale.mkdir()
    (stale / 'model.safetensors').write_bytes(b'half')
    mine = tmp_path / f'.finetune-{os.getpid()}-xyz'  # a write of this process, still going on
    mine.mkdir()
    finetune.save_model(model, str(tmp_path / 'again'))
    assert not stale.exists() and mine.exists()
