"""Saved models: nothing in an artifact turns on code execution or leads the loader outside the folder, and a
damaged artifact is answered with the file and the field (finetune/artifacts.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import finetune
from finetune.errors import ArtifactError, FinetuneError
from test_artifacts import _edit_config
from test_training import text_pairs

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


def test_sentence_transformers_modules_may_not_point_outside(artifact, tiny_bert_dir):
    path, _ = artifact
    (path / 'backbone' / 'modules.json').write_text(json.dumps(
        [{'idx': 0, 'name': '0', 'path': str(tiny_bert_dir), 'type': 'sentence_transformers.models.Transformer'}]))
    with pytest.raises(FinetuneError, match='outside'):
        finetune.load(str(path))


def test_cli_fit_without_a_model_takes_the_registrys_default_and_resumes(tmp_path):
    from finetune.cli import main
    csv = tmp_path / 'pairs.csv'
    csv.write_text('query,doc\n' + '\n'.join(f'{q},{d}' for q, d in text_pairs()[:16]) + '\n')
    runner = CliRunner()
    out = tmp_path / 'out'
    result = runner.invoke(main, ['fit', '--train-data', str(csv), '--batch-size', '8', '--num-workers', '0',
                                  '--output', str(out), '--save-steps', '1', '--precision', 'fp32'])
    assert result.exit_code == 0, result.output
    assert 'model: all-minilm-l6-v2 (the default for text-to-text data' in result.output
    assert sorted(os.listdir(out)) == ['checkpoint-1', 'checkpoint-2', 'model']
    result = runner.invoke(main, ['fit', '--train-data', str(csv), '--resume-from', str(out), '--batch-size', '4'])
    assert result.exit_code == 2 and 'batch_size: given 4, checkpoint 8' in result.output, result.output
    result = runner.invoke(main, ['fit', '--train-data', str(csv), '--resume-from', str(out / 'checkpoint-1')])
    assert result.exit_code == 0, result.output
    assert 'resuming from' in result.output and 'at epoch 1, batch 2 (step 1)' in result.output
