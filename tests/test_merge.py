"""WiSE-FT weight interpolation (finetune/merging.py) and `finetune merge`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import finetune
from finetune.errors import InputError, OptionError
from test_training import text_pairs

TEXTS = ['the red dog', 'food runs', 'a big car']


@pytest.fixture(scope='module')
def pair():
    torch.manual_seed(2)
    base = finetune.build_model('fake-text')
    tuned = finetune.fit(base, text_pairs(), epochs=2, batch_size=8, learning_rate=1e-2, num_workers=0,
                         precision='fp32', log=lambda m: None).model
    torch.manual_seed(2)
    return finetune.build_model('fake-text'), tuned  # the same base, untouched by fit


def test_the_interpolation_is_exact_in_weight_space(pair):
    base, tuned = pair
    merged = finetune.merge(base, tuned, 0.3)
    for name, value in merged.state_dict().items():
        expected = ((1 - 0.3) * base.state_dict()[name].double() + 0.3 * tuned.state_dict()[name].double()).float()
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)
    assert merged is not tuned and merged.name == tuned.name


def test_the_end_points_are_the_base_and_the_tuned_model(pair):
    base, tuned = pair
    np.testing.assert_array_equal(finetune.merge(base, tuned, 0).encode(TEXTS), base.encode(TEXTS))
    np.testing.assert_array_equal(finetune.merge(base, tuned, 1).encode(TEXTS), tuned.encode(TEXTS))
    assert not np.allclose(base.encode(TEXTS), tuned.encode(TEXTS))


def test_weights_the_base_lacks_come_from_the_tuned_model(pair):
    base, tuned = pair
    headed = finetune.build_model('fake-text', {'output_dim': 8})
    headed.load_state_dict({**tuned.state_dict(), **{k: v for k, v in headed.state_dict().items()
                                                     if k.startswith('projection')}})
    merged = finetune.merge(base, headed, 0.5)
    torch.testing.assert_close(merged.projection.layers[0].weight, headed.projection.layers[0].weight)


def test_bad_alpha_and_other_architectures_are_refused(pair):
    base, tuned = pair
    with pytest.raises(OptionError, match=r'alpha: expected a number in \[0, 1\]'):
        finetune.merge(base, tuned, 1.5)
    with pytest.raises(InputError, match="'backbone.embed.weight' is .* WiSE-FT needs the same architecture"):
        finetune.merge(finetune.build_model('fake-text', {'dim': 16}), tuned, 0.5)
    with pytest.raises(InputError, match='share no weight'):
        finetune.merge(finetune.build_model('fake-image'), tuned, 0.5)


def test_the_merge_command(pair, tmp_path):
    from finetune.cli import main
    base, tuned = pair
    finetune.save_model(base, str(tmp_path / 'base'))
    finetune.save_model(tuned, str(tmp_path / 'tuned'))
    runner = CliRunner()
    result = runner.invoke(main, ['merge', str(tmp_path / 'base'), str(tmp_path / 'tuned'), '--alpha', '0.25',
                                  '--output', str(tmp_path / 'quarter')])
    assert result.exit_code == 0, result.output
    quarter = finetune.load(str(tmp_path / 'quarter'))
    np.testing.assert_allclose(quarter.encode(TEXTS), finetune.merge(base, tuned, 0.25).encode(TEXTS), atol=1e-6)
    csv = tmp_path / 'pairs.csv'
    csv.write_text('query,doc\n' + '\n'.join(f'{q},{d}' for q, d in text_pairs()) + '\n')
    result = runner.invoke(main, ['merge', str(tmp_path / 'base'), str(tmp_path / 'tuned'), '--eval-data', str(csv),
                                  '--output', str(tmp_path / 'auto')])
    assert result.exit_code == 0, result.output
    assert 'WiSE-FT: alpha' in result.output and 'merged with alpha' in result.output
    config = json.loads((tmp_path / 'auto' / 'finetune_config.json').read_text())
    assert config['wise_ft']['alpha'] in (0.0, 0.25, 0.5, 0.75, 1.0)
    result = runner.invoke(main, ['merge', str(tmp_path / 'base'), str(tmp_path / 'tuned'), '--output',
                                  str(tmp_path / 'x')])
    assert result.exit_code == 2 and "alpha='auto' is chosen on evaluation data" in result.output


def test_models_whose_weight_names_differ_are_refused_not_averaged_in_part(pair):
    base, tuned = pair
    shallower = {k: v for k, v in base.state_dict().items() if k != 'backbone.mix.weight'}  # one layer fewer
    with pytest.raises(InputError, match=r"1 only in the fine-tuned model \('backbone.mix.weight'\); WiSE-FT needs "
                                         r'the same architecture'):
        finetune.merge(shallower, tuned, 0.5)
    renamed = {k.replace('backbone.', 'backbone.stem.'): v for k, v in base.state_dict().items()}
    renamed['backbone.embed.weight'] = base.state_dict()['backbone.embed.weight']
    with pytest.raises(InputError, match=r"3 only in the base model \('backbone.stem.embed.weight', .*; 2 only in "
                                         r"the fine-tuned model \('backbone.mix.weight', 'backbone.mix.bias'\)"):
        finetune.merge(renamed, tuned, 0.5)


def test_numpy_numbers_are_alphas(pair):
    base, tuned = pair
    for alpha in (np.float32(0.5), np.float64(0.5)):
        np.testing.assert_array_equal(finetune.merge(base, tuned, alpha).encode(TEXTS),
                                      finetune.merge(base, tuned, 0.5).encode(TEXTS))
    np.testing.assert_array_equal(finetune.merge(base, tuned, np.int64(1)).encode(TEXTS), tuned.encode(TEXTS))
    with pytest.raises(OptionError, match=r'alpha: expected a number in \[0, 1\]'):
        finetune.merge(base, tuned, np.float32(1.5))
    with pytest.raises(OptionError, match=r'alpha: expected a number in \[0, 1\]'):
        finetune.merge(base, tuned, np.bool_(True))


def test_a_base_without_adapters_merges_with_its_adapted_version_as_with_zero_adapters():
    torch.manual_seed(4)
    adapted = finetune.build_model('fake-text', {'lora': {'target_modules': ['mix'], 'r': 4, 'dropout': 0.0}})
    start = {k: v.clone() for k, v in adapted.state_dict().items()}
    with torch.no_grad():
        adapted.backbone.mix.lora_B['default'].weight.normal_()  # as training moves it
    plain = {k.replace('.base_layer', ''): v for k, v in start.items() if 'lora_' not in k}
    expected = finetune.merge(start, adapted, 0.5).state_dict()
    for key, value in finetune.merge(plain, adapted, 0.5).state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_merging_a_folder_that_does_not_exist_says_so(tmp_path):
    from finetune.errors import ArtifactError
    base = finetune.build_model('fake-text')
    with pytest.raises(ArtifactError, match=r"the folder '.*nowhere' does not exist; expected the folder of a saved"):
        finetune.merge(base, str(tmp_path / 'nowhere'), 0.5)
