"""LoRA adapters (finetune/adapters.py) on the fake family: the option, what trains, save and load, merging,
WiSE-FT of an adapter, checkpoints and exact resume, GradCache, export, and `finetune merge-adapter`."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import finetune
from finetune.adapters import has_lora, is_adapter_key, lora_option, merge_lora
from finetune.errors import ArtifactError, OptionError
from finetune.training import checkpoint as ckpt
from test_training import text_pairs

TEXTS = ['the red dog', 'food runs', 'a big car']
LORA = {'lora': {'target_modules': ['mix'], 'r': 4, 'alpha': 8, 'dropout': 0.0}}
QUIET = dict(batch_size=8, num_workers=0, device='cpu', precision='fp32', seed=3, learning_rate=1e-2,
             log=lambda m: None)


def _adapted(seed: int = 0, **options):
    torch.manual_seed(seed)
    return finetune.build_model('fake-text', {**LORA, **options})


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_option_is_validated_with_the_closest_choices():
    assert lora_option('lora', False) is False and lora_option('lora', None) is False
    assert lora_option('lora', True) == {'r': 16, 'alpha': 32.0, 'dropout': 0.05, 'target_modules': None}
    with pytest.raises(OptionError, match="unknown key 'rank'"):
        finetune.build_model('fake-text', {'lora': {'rank': 8}})
    with pytest.raises(OptionError, match="option 'r': expected a positive integer"):
        finetune.build_model('fake-text', {'lora': {'r': 0, 'target_modules': ['mix']}})
    with pytest.raises(OptionError, match="expected True, False or a dict"):
        finetune.build_model('fake-text', {'lora': 'yes'})
    with pytest.raises(OptionError, match="no module named 'mixer' to adapt.*Did you mean 'mix'.*Modules it has: "
                                          "embed, mix"):
        finetune.build_model('fake-text', {'lora': {'target_modules': ['mixer']}})
    with pytest.raises(OptionError, match="'fake-text' declares no default modules to adapt; pass"):
        finetune.build_model('fake-text', {'lora': True})


def test_fresh_adapters_embed_as_the_base_and_only_they_train():
    model = _adapted(output_dim=6)
    torch.manual_seed(0)
    base = finetune.build_model('fake-text', {'output_dim': 6})
    np.testing.assert_array_equal(model.encode(TEXTS), base.encode(TEXTS))  # B starts at zero
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ['backbone.mix.lora_A.default.weight', 'backbone.mix.lora_B.default.weight',
                         'projection.layers.0.bias', 'projection.layers.0.weight']
    assert has_lora(model) and not has_lora(base)


@pytest.fixture(scope='module')
def trained():
    """A fit with adapters: the model before and after, and the run."""
    before = _adapted()
    start = _weights(before)
    logs = []
    run = finetune.fit(before, text_pairs(), epochs=2, **dict(QUIET, log=logs.append))
    return start, run, logs


def test_fit_trains_the_adapters_and_leaves_the_base_weights_as_they_were(trained):
    start, run, logs = trained
    after = _weights(run.model)
    for key, value in start.items():
        if is_adapter_key(key) and 'lora_B' in key:
            assert not torch.equal(value, after[key]), key
        elif not is_adapter_key(key):
            torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)
    adapters = sum(v.numel() for k, v in start.items() if is_adapter_key(k))
    total = sum(p.numel() for p in run.model.parameters())
    assert f'LoRA adapters: {adapters:,} trainable parameters of {total:,} ' in logs[0]


def test_save_and_load_keep_the_adapters(trained, tmp_path):
    _, run, _ = trained
    run.save(str(tmp_path / 'm'))
    loaded = finetune.load(str(tmp_path / 'm'))
    assert has_lora(loaded) and loaded.options['lora']['r'] == 4
    np.testing.assert_allclose(loaded.encode(TEXTS), run.model.encode(TEXTS), atol=1e-6)


def test_merging_folds_the_update_into_the_weights(trained):
    _, run, _ = trained
    merged = merge_lora(run.model)
    assert not has_lora(merged) and has_lora(run.model) and merged.options['lora'] is False
    assert type(merged.backbone.mix) is torch.nn.Linear
    np.testing.assert_allclose(merged.encode(TEXTS), run.model.encode(TEXTS), atol=1e-5)


def test_wise_ft_of_an_adapter_is_the_adapter_scaled(trained):
    start, run, _ = trained
    base = _adapted()
    base.load_state_dict(start)
    half = finetune.merge(base, run.model, 0.5)
    tuned = dict(run.model.state_dict())
    for key, value in half.state_dict().items():
        if '.lora_A.' in key:  # the fine-tuned A, not an average of two A's
            torch.testing.assert_close(value, tuned[key], rtol=0, atol=0)
        elif '.lora_B.' in key:  # B was zero in the base: half of it
            torch.testing.assert_close(value, tuned[key] / 2)
    expected = merge_lora(run.model)
    with torch.no_grad():  # the merged update at alpha 0.5 is half the fine-tuned one
        layer = run.model.backbone.mix
        update = layer.lora_B['default'].weight @ layer.lora_A['default'].weight * layer.scaling['default']
        expected.backbone.mix.weight.copy_(layer.base_layer.weight + update / 2)
    np.testing.assert_allclose(half.encode(TEXTS), expected.encode(TEXTS), atol=1e-5)


def test_a_run_with_adapters_resumes_exactly(tmp_path):
    full = finetune.fit(_adapted(), text_pairs(), epochs=2, output_dir=str(tmp_path / 'a'), save_steps=1,
                        save_total_limit=10, **QUIET)
    resumed = finetune.fit(None, text_pairs(), resume_from=str(tmp_path / 'a' / 'checkpoint-2'),
                           output_dir=str(tmp_path / 'b'), log=lambda m: None)
    assert has_lora(resumed.model)
    for key, value in _weights(full.model).items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)


def test_gradcache_trains_adapters_with_the_gradients_of_the_whole_batch():
    from test_gradcache import _no_dropout  # the chunks draw other dropout masks than the whole batch
    whole = finetune.fit(_no_dropout(_adapted()), text_pairs(), epochs=1, **QUIET)
    cached = finetune.fit(_no_dropout(_adapted()), text_pairs(), epochs=1, loss_options={'mini_batch_size': 3},
                          **QUIET)
    for key, value in _weights(whole.model).items():
        torch.testing.assert_close(cached.model.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_an_onnx_export_holds_the_merged_weights(trained, tmp_path):
    pytest.importorskip('onnxruntime')
    _, run, _ = trained
    logs = []
    folder = finetune.export(run.model, output=str(tmp_path / 'onnx'), log=logs.append)
    exported = finetune.load(folder)
    assert exported.artifact_config['model_options']['lora'] is False
    np.testing.assert_allclose(exported.encode(TEXTS), run.model.encode(TEXTS), atol=1e-4)
    assert any('LoRA adapters merged' in line for line in logs)


def test_the_cli_merges_the_adapters_of_a_saved_model(trained, tmp_path):
    from finetune.cli import main
    _, run, _ = trained
    run.save(str(tmp_path / 'adapted'))
    result = CliRunner().invoke(main, ['merge-adapter', str(tmp_path / 'adapted'), '--output',
                                       str(tmp_path / 'plain')])
    assert result.exit_code == 0, result.output
    plain = finetune.load(str(tmp_path / 'plain'))
    assert not has_lora(plain)
    np.testing.assert_allclose(plain.encode(TEXTS), run.model.encode(TEXTS), atol=1e-5)
    again = CliRunner().invoke(main, ['merge-adapter', str(tmp_path / 'plain'), '--output', str(tmp_path / 'x')])
    assert again.exit_code == 2 and 'has no LoRA adapters to merge' in again.output
    missing = CliRunner().invoke(main, ['merge-adapter', str(tmp_path / 'nope'), '--output', str(tmp_path / 'y')])
    assert missing.exit_code == 2 and 'does not exist' in missing.output
    assert not os.path.exists(tmp_path / 'x') and not os.path.exists(tmp_path / 'y')


def test_the_fake_family_saves_the_whole_model_since_its_base_has_no_pretrained_weights(trained, tmp_path, caplog):
    _, run, _ = trained
    import logging
    with caplog.at_level(logging.INFO, logger='finetune'):
        run.save(str(tmp_path / 'whole'))
    assert 'the whole model is saved, not the adapters alone' in caplog.text
    config = finetune.load(str(tmp_path / 'whole')).artifact_config
    assert 'adapter' not in config and ckpt.run_id_of(str(tmp_path / 'whole')) is not None
    with pytest.raises(ArtifactError):
        finetune.load(str(tmp_path / 'nothing-here'))
