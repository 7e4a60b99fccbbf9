"""fit(): end to end per task on tiny models, artifacts, resume, callbacks, bad input, 2 processes."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import finetune
from finetune.callbacks import BestModelCheckpoint, EarlyStopping, MetricsLogger
from finetune.errors import InputError, OptionError
from finetune.data.kinds import pairs_within as _pairs_within
from finetune.training import TrainingError, resolve_precision

ANIMALS = ['dog', 'cat', 'man', 'woman', 'tree', 'car', 'house', 'sea']
COLOURS = ['red', 'blue', 'green', 'old', 'new', 'big', 'small', 'happy']


CIPHER = {'dog': 'food', 'cat': 'bread', 'man': 'piano', 'woman': 'guitar', 'tree': 'sky', 'car': 'sea',
          'red': 'runs', 'blue': 'fast', 'green': 'slow', 'old': 'eating'}


def nan_on_call(monkeypatch, call: int) -> list:
    """Make InfoNCE's `call`-th forward (from 1) return NaN; returns the list that counts the calls."""
    from finetune import losses
    calls, real = [], losses.InfoNCELoss.forward

    def forward(self, inputs):
        calls.append(1)
        value = real(self, inputs)
        return value * float('nan') if len(calls) == call else value
    monkeypatch.setattr(losses.InfoNCELoss, 'forward', forward)
    return calls


def text_pairs():
    """(query, doc) pairs sharing no word, so only training can match them: 'the red dog' -> 'food runs'."""
    return [(f'the {c} {a}', f'{CIPHER[a]} {CIPHER[c]}') for a in ANIMALS[:6] for c in COLOURS[:4]]


def coloured_squares(n_per_class: int = 6, size: int = 32, seed: int = 0):
    """Labeled images: each class a colour, with noise and a random square."""
    rng = np.random.default_rng(seed)
    palette = {'red': (220, 30, 30), 'green': (30, 200, 40), 'blue': (30, 40, 220), 'yellow': (230, 220, 30)}
    rows = []
    for name, rgb in palette.items():
        for _ in range(n_per_class):
            img = np.clip(rng.normal(0, 25, (size, size, 3)) + rgb, 0, 255).astype(np.uint8)
            x, y = rng.integers(0, size - 8, 2)
            img[y:y + 8, x:x + 8] = rng.integers(0, 255, 3)
            rows.append((img, name))
    return rows


def test_text_to_text_fit_improves_and_saves_bit_identical(tmp_path):
    data = text_pairs()
    run = finetune.fit('fake-text', data, data, epochs=4, batch_size=8, learning_rate=1e-2, seed=0,
                       log=lambda m: None)
    before, after = run.metrics['before'], run.metrics['after']
    assert after['ndcg@10'] > before['ndcg@10'] + 0.5, (before['ndcg@10'], after['ndcg@10'])
    assert all(np.isfinite(h['loss']) for h in run.history if 'loss' in h)
    path = run.save(str(tmp_path / 'model'))
    loaded = finetune.load(path)
    texts = ['the red dog', 'a big car']
    np.testing.assert_array_equal(finetune.encode(loaded, texts), finetune.encode(run.model, texts))
    config = json.loads((tmp_path / 'model' / 'finetune_config.json').read_text())
    assert config['metrics']['after']['ndcg@10'] == after['ndcg@10']
    assert config['model_options']['pretrained'] is False and config['versions']['torch']
    assert sorted(os.listdir(tmp_path)) == ['model']  # nothing half-written beside it


def test_image_to_image_fit_with_a_cosine_classifier_loss(tmp_path):
    data = coloured_squares()
    logs = []
    run = finetune.fit('fake-image', data, data, loss='NormalizedSoftmaxLoss', epochs=3, batch_size=8,
                       learning_rate=1e-3, model_options={'output_dim': 16}, log=logs.append)
    assert any('added a cosine classifier head with 4 classes' in line for line in logs)
    assert run.model.classifier is not None and run.model.classifier.weight.shape == (4, 16)
    assert run.metrics['after']['map@10'] >= run.metrics['before']['map@10']
    path = run.save(str(tmp_path / 'img'))
    loaded = finetune.load(path)
    images = [row[0] for row in data[:3]]
    np.testing.assert_array_equal(loaded.encode(images), run.model.encode(images))


def test_text_to_image_fit_trains_both_towers_and_the_temperature():
    rng = np.random.default_rng(0)
    colours = {'red': (220, 30, 30), 'green': (30, 200, 40), 'blue': (30, 40, 220)}
    rows = [(f'a {name} car', np.clip(rng.normal(0, 20, (32, 32, 3)) + rgb, 0, 255).astype(np.uint8))
            for name, rgb in colours.items() for _ in range(4)]
    model = finetune.build_model('fake-clip')
    scale_before = float(model.logit_scale.detach())
    text_before = model.towers['text'].backbone.mix.weight.detach().clone()
    image_before = model.towers['image'].backbone.conv1.weight.detach().clone()
    run = finetune.fit(model, rows, rows, epochs=2, batch_size=3, learning_rate=1e-3, log=lambda m: None)
    assert run.metrics['before'] and run.metrics['after']
    assert float(run.model.logit_scale.detach()) != scale_before
    assert not torch.equal(run.model.towers['text'].backbone.mix.weight, text_before)
    assert not torch.equal(run.model.towers['image'].backbone.conv1.weight, image_before)


def test_resume_continues_from_the_checkpoint(tmp_path):
    """The checkpoint layout moved from one 'checkpoint' folder to 'checkpoint-<step>' folders (see
    test_checkpoints.py); resuming a finished run with the same settings has nothing left to do."""
    data = text_pairs()
    first = finetune.fit('fake-text', data, epochs=1, batch_size=8, output_dir=str(tmp_path / 'out'),
                         log=lambda m: None)
    steps = len(first.history)
    checkpoint = tmp_path / 'out' / f'checkpoint-{steps}'
    assert (checkpoint / 'trainer_state.pt').is_file() and (tmp_path / 'out' / 'model').is_dir()
    again = finetune.fit(None, data, resume_from=str(tmp_path / 'out'), log=lambda m: None)
    assert [h['step'] for h in again.history] == list(range(1, steps + 1))
    with pytest.raises(OptionError, match="epochs: given 2, checkpoint 1"):
        finetune.fit(None, data, epochs=2, resume_from=str(checkpoint), log=lambda m: None)


def test_callbacks_log_checkpoint_and_stop_early(tmp_path):
    data = text_pairs()
    log_csv, log_jsonl = tmp_path / 'log.csv', tmp_path / 'log.jsonl'
    stopper = EarlyStopping(monitor='ndcg@10', patience=1, min_delta=10.0)  # nothing improves by 10
    run = finetune.fit('fake-text', data, data, epochs=5, batch_size=8, eval_every=1,
                       callbacks=[MetricsLogger(str(log_csv)), MetricsLogger(str(log_jsonl)), stopper,
                                  BestModelCheckpoint(str(tmp_path / 'best'), monitor='ndcg@10')],
                       log=lambda m: None)
    steps = [h for h in run.history if 'loss' in h]
    assert len(steps) == 2  # first evaluation sets the best, the second misses by min_delta: stop
    lines = log_csv.read_text().splitlines()
    assert lines[0].startswith('event,epoch,step,loss') and len(lines) == 1 + 2 + 2
    rows = list(csv.DictReader(io.StringIO(log_csv.read_text())))  # the evaluations' metrics are kept
    evaluations = [r for r in rows if r['event'] == 'evaluate']
    assert len(evaluations) == 2 and all(float(r['ndcg@10']) >= 0 for r in evaluations)
    assert [r['ndcg@10'] for r in rows if r['event'] == 'step'] == ['', '']
    assert float(evaluations[-1]['ndcg@10']) == pytest.approx([h for h in run.history if 'eval' in h][-1]['eval']['ndcg@10'])
    records = [json.loads(line) for line in log_jsonl.read_text().splitlines()]
    assert {r['event'] for r in records} == {'step', 'evaluate'} and 'ndcg@10' in records[-1]
    assert finetune.load(str(tmp_path / 'best')).encode(['a dog']).shape == (1, 32)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_model(tmp_path, monkeypatch):
    from finetune import losses
    monkeypatch.setattr(losses.InfoNCELoss, 'forward', lambda self, inputs: inputs.anchors.sum() * float('nan'))
    with pytest.raises(TrainingError, match=r'NaN or infinite at epoch 1, step 1.*last-good'):
        finetune.fit('fake-text', text_pairs(), epochs=1, batch_size=8, output_dir=str(tmp_path),
                     log=lambda m: None)
    assert finetune.load(str(tmp_path / 'last-good')).encode(['a dog']).shape == (1, 32)


@pytest.mark.parametrize('kwargs, error, message', [
    ({'epochs': 0}, OptionError, 'epochs: expected an integer >= 1, got 0'),
    ({'batch_size': 500}, InputError, 'batch_size=500 is larger than the training data'),
    ({'loss': 'CoSENTLoss'}, OptionError, "does not fit 'pairs' data.*InfoNCE"),
    ({'loss': 'InfoNCE', 'loss_options': {'temprature': 0.1}}, OptionError, "unknown key 'temprature'"),
    ({'precision': 'bf32'}, OptionError, 'precision: expected one of auto, bf16, fp16, fp32'),
    ({'device': 'tpu'}, OptionError, "device: expected 'auto', 'cpu'"),
    ({'optimizer': 'adamm'}, OptionError, "unknown 'adamm'.*'adam'"),
    ({'scheduler': 'cosin'}, OptionError, "did you mean 'cosine'"),
    ({'max_grad_norm': -1}, OptionError, 'max_grad_norm: expected a positive number.*or None'),
    ({'max_grad_norm': 0}, OptionError, 'max_grad_norm: expected a positive number'),
    ({'max_grad_norm': float('nan')}, OptionError, 'max_grad_norm: expected a positive number'),
    ({'precision': 'fp16', 'device': 'cpu'}, OptionError, "fp16 autocast runs on CUDA.*'fp32', 'bf16'"),
    ({'seed': 1.5}, OptionError, 'seed: expected an integer >= 0, got 1.5'),
    ({'seed': '42'}, OptionError, "seed: expected an integer >= 0, got '42'"),
    ({'eval_every': -1}, OptionError, 'eval_every: expected an integer >= 1, got -1'),
    ({'warmup_ratio': 'a'}, OptionError, "warmup_ratio: expected a number in \\[0, 1\\), got 'a'"),
    ({'optimizer_options': {'weight_decay': 'high'}}, OptionError,
     "optimizer_options for AdamW: weight_decay='high'; expected a finite number"),
    ({'optimizer_options': {'betas': (0.9,)}}, OptionError, 'betas=\\(0.9,\\); expected 2 numbers'),
    ({'optimizer_options': {'amsgrad': 'yes'}}, OptionError, "amsgrad='yes'; expected True or False"),
    ({'optimizer_options': {'eps': -1.0}}, OptionError, 'optimizer_options for AdamW: .* refused: Invalid epsilon'),
    ({'optimizer_options': 0.01}, OptionError, 'optimizer_options: expected a dict'),
    ({'callbacks': EarlyStopping()}, OptionError, 'callbacks: expected a list'),
    ({'progress': 'yes'}, OptionError, 'progress: expected True, False or None'),
])
def test_bad_settings_are_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=f'(?i){message}'):
        finetune.fit('fake-text', text_pairs(), **{'batch_size': 8, **kwargs}, log=lambda m: None)


def test_data_that_does_not_fit_the_model_says_why():
    with pytest.raises(InputError, match='holds image items but .* is a text model'):
        finetune.fit('fake-text', coloured_squares(), batch_size=4, log=lambda m: None)
    with pytest.raises(InputError, match='train_data is empty'):
        finetune.fit('fake-text', [], batch_size=4, log=lambda m: None)


def test_pairs_within_pairs_items_of_one_class():
    labels = torch.tensor([3, 1, 3, 1, 1, 2, 3, 3])
    i, j = _pairs_within(labels)
    assert torch.equal(labels[i], labels[j])
    assert len(set(i.tolist()) | set(j.tolist())) == 2 * len(i) == 6  # disjoint; the odd '1' and the lone '2' out


def test_precision_auto_follows_the_hardware(monkeypatch):
    from finetune.training import hardware
    monkeypatch.setattr(hardware, 'cpu_supports_bf16', lambda: False)
    assert resolve_precision('auto', 'cpu') == 'fp32'
    monkeypatch.setattr(hardware, 'cpu_supports_bf16', lambda: True)
    assert resolve_precision('auto', 'cpu') == 'bf16'
    assert resolve_precision('fp32', 'cpu') == 'fp32'


def test_cli_fit_evaluate_encode(tmp_path):
    from finetune.cli import main
    csv = tmp_path / 'pairs.csv'
    csv.write_text('query,doc\n' + '\n'.join(f'{q},{d}' for q, d in text_pairs()) + '\n')
    runner = CliRunner()
    out = tmp_path / 'out'
    result = runner.invoke(main, ['fit', '--model', 'fake-text', '--train-data', str(csv),
                                  '--eval-data', str(csv), '--batch-size', '8', '--model-option', 'pooler=GeM',
                                  '--model-option', 'pooler_options.p=2.5', '--output', str(out)])
    assert result.exit_code == 0, result.output
    assert 'ndcg@10' in result.output and 'before' in result.output and 'after' in result.output
    model = finetune.load(str(out / 'model'))
    assert type(model.pooler).__name__ == 'GeMPooler'
    result = runner.invoke(main, ['evaluate', '--model', str(out / 'model'), '--data', str(csv)])
    assert result.exit_code == 0 and 'mrr@10' in result.output
    lines = tmp_path / 'texts.txt'
    lines.write_text('a red dog\nthe old car\n')
    result = runner.invoke(main, ['encode', '--model', str(out / 'model'), '--input', str(lines),
                                  '--output', str(tmp_path / 'emb.npy')])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / 'emb.npy').shape == (2, 32)
    result = runner.invoke(main, ['fit', '--model', 'fake-text', '--train-data', str(csv),
                                  '--epochs', '0'])
    assert result.exit_code == 2 and 'epochs' in result.output and 'Traceback' not in result.output


@pytest.mark.slow
def test_two_processes_train_in_lockstep(tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks end with the same weights, rank 0 saves."""
    script = tmp_path / 'ddp_fit.py'
    script.write_text(textwrap.dedent(f'''
        import os, sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import finetune
        from test_training import text_pairs
        from finetune.callbacks import BestModelCheckpoint, EarlyStopping
        run = finetune.fit('fake-text', text_pairs(), text_pairs(), epochs=1, batch_size=4, device='cpu',
                           precision='fp32', output_dir='{tmp_path}/out', log=lambda m: None, eval_every=1,
                           callbacks=[EarlyStopping(patience=2, min_delta=10.0),
                                      BestModelCheckpoint('{tmp_path}/best')])
        total = sum(float(p.double().sum()) for p in run.model.parameters())
        with open('{tmp_path}/rank' + os.environ['RANK'], 'w') as f:
            f.write(repr(total) + ' ' + str(len([h for h in run.history if 'loss' in h])) + ' '
                    + str(run.config['steps_per_epoch']))
    '''))
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1')
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                             '--master_port', '29533', str(script)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = (tmp_path / 'rank0').read_text().split()
    rank1 = (tmp_path / 'rank1').read_text().split()
    assert rank0[0] == rank1[0]  # the same weights on both processes
    steps = [int(rank0[1]), int(rank1[1])]
    assert steps[0] == steps[1] == 3  # early stopping after 3 evaluations, on both processes alike
    alone = finetune.fit('fake-text', text_pairs(), epochs=1, batch_size=4, device='cpu', precision='fp32',
                         num_workers=0, log=lambda m: None)
    # each process takes half the steps one process would, and says so
    assert int(rank0[2]) == int(rank1[2]) == math.ceil(alone.config['steps_per_epoch'] / 2)
    assert (tmp_path / 'out' / 'model' / 'model.safetensors').is_file()
    assert (tmp_path / 'best' / 'model.safetensors').is_file()


def test_images_are_decoded_in_worker_processes(tmp_path):
    """Image files are opened by DataLoader workers: a bad file is reported by name from there."""
    from PIL import Image
    rows = []
    for label, colour in (('red', (220, 30, 30)), ('blue', (30, 40, 220))):
        for i in range(4):
            path = tmp_path / f'{label}{i}.png'
            Image.new('RGB', (40, 40), colour).save(path)
            rows.append((str(path), label))
    run = finetune.fit('fake-image', rows, epochs=1, batch_size=4, num_workers=2,
                       log=lambda m: None)
    assert len(run.history) == 2
    (tmp_path / 'blue3.png').write_bytes(b'not a png')
    with pytest.raises(InputError, match='blue3.png'):
        finetune.fit('fake-image', rows, epochs=1, batch_size=4, num_workers=2,
                     log=lambda m: None)


def test_two_fits_in_one_process_may_use_different_precisions():
    data = text_pairs()[:8]
    first = finetune.fit('fake-text', data, epochs=1, batch_size=4, precision='fp32', num_workers=0,
                         log=lambda m: None)
    second = finetune.fit('fake-text', data, epochs=1, batch_size=4, precision='bf16', num_workers=0,
                          log=lambda m: None)
    assert first.config['precision'] == 'fp32' and second.config['precision'] == 'bf16'
    assert len(first.history) == len(second.history) == 2


def test_same_seed_same_model_and_accumulation_counts_optimizer_steps():
    data = text_pairs()
    runs = [finetune.fit('fake-text', data, epochs=1, batch_size=4, seed=7, num_workers=0,
                         log=lambda m: None) for _ in range(2)]
    texts = ['the red dog', 'food runs']
    np.testing.assert_array_equal(runs[0].model.encode(texts), runs[1].model.encode(texts))
    accumulated = finetune.fit('fake-text', data, epochs=1, batch_size=4, seed=7, num_workers=0,
                               gradient_accumulation_steps=3, log=lambda m: None)
    assert len(runs[0].history) == len(data) // 4 == 6
    assert len(accumulated.history) == 2  # 6 batches, one optimizer step per 3


def test_a_crash_while_saving_leaves_the_earlier_artifact_intact(tmp_path, monkeypatch):
    import safetensors.torch
    model = finetune.build_model('fake-text')
    target = tmp_path / 'model'
    finetune.save_model(model, str(target))
    before = (target / 'model.safetensors').read_bytes()

    def crash(*args, **kwargs):
        raise OSError('disk full')
    monkeypatch.setattr(safetensors.torch, 'save_file', crash)
    with pytest.raises(OSError, match='disk full'):
        finetune.save_model(model, str(target))
    assert (target / 'model.safetensors').read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ['model']  # no temporary folder left behind


def test_progress_bar_is_quiet_off_a_terminal(capsys):
    finetune.fit('fake-text', text_pairs(), epochs=1, batch_size=8, num_workers=0, log=lambda m: None)
    captured = capsys.readouterr()
    assert '━' not in captured.err and '━' not in captured.out


# ---------------------------------------------------------------- a failed run never leaves a broken model

def test_a_nan_stop_keeps_a_model_that_still_encodes(tmp_path):
    """A huge learning rate: the update before the NaN already broke the weights, and the failing forward
    moved BatchNorm's statistics; last-good must hold neither."""
    data = coloured_squares()
    with pytest.raises(TrainingError, match=r'NaN or infinite at epoch 1, step \d.*'
                                            r'(the weights it started from|the weights of step \d, the last good copy)'):
        finetune.fit('fake-image', data, epochs=3, batch_size=8, learning_rate=1e8, num_workers=0, precision='fp32',
                     output_dir=str(tmp_path), log=lambda m: None)
    kept = finetune.load(str(tmp_path / 'last-good'))
    emb = kept.encode([row[0] for row in data[:6]])
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    for name, buffer in kept.named_buffers():
        if buffer.is_floating_point():
            assert torch.isfinite(buffer).all(), name


def test_a_model_given_to_fit_is_restored_too_when_the_loss_turns_nan(monkeypatch):
    model = finetune.build_model('fake-text')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nan_on_call(monkeypatch, 2)
    with pytest.raises(TrainingError, match='step 2'):
        finetune.fit(model, text_pairs(), epochs=1, batch_size=8, num_workers=0, learning_rate=1e-2,
                     log=lambda m: None)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the weights step 1 started from


def test_a_missing_or_broken_file_is_reported_before_training_with_its_row(tmp_path):
    from PIL import Image
    lines = ['image,label']
    for label, colour in (('red', (220, 30, 30)), ('blue', (30, 40, 220))):
        for i in range(4):
            Image.new('RGB', (40, 40), colour).save(tmp_path / f'{label}{i}.png')
            lines.append(f'{label}{i}.png,{label}')
    (tmp_path / 'blue1.png').unlink()
    (tmp_path / 'red2.png').write_bytes(b'not a png at all')
    csv = tmp_path / 'data.csv'
    csv.write_text('\n'.join(lines) + '\n')
    # batch_size is too large as well: the files are what the user hears about first
    with pytest.raises(InputError) as info:
        finetune.fit('fake-image', str(csv), epochs=1, batch_size=500,
                     log=lambda m: None)
    message = str(info.value)
    assert message.startswith('train_data: 2 of 8 files cannot be used')
    assert "data.csv, line 4: " in message and "red2.png' is not an image that can be decoded" in message
    assert "data.csv, line 7: " in message and "blue1.png' does not exist" in message
    assert 'batch_size' not in message


def test_an_error_in_a_dataloader_worker_surfaces_as_itself(tmp_path):
    """A file whose header decodes but whose pixels do not passes the check, and fails in a worker: the
    user gets the InputError with the row and the file, not torch's 'Caught ... in DataLoader worker'."""
    from PIL import Image
    rows = []
    for label, colour in (('red', (220, 30, 30)), ('blue', (30, 40, 220))):
        for i in range(4):
            path = tmp_path / f'{label}{i}.png'
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
            rows.append((str(path), label))
    broken = tmp_path / 'blue2.png'
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated PNG: the header is there, the pixels are not
    with pytest.raises(InputError) as info:
        finetune.fit('fake-image', rows, epochs=1, batch_size=4, num_workers=1,
                     log=lambda m: None)
    message = str(info.value)
    assert message.startswith('train_data, row 6: ') and 'blue2.png' in message
    assert 'DataLoader worker' not in message and 'Traceback' not in message


def test_a_damaged_trainer_state_names_the_file(tmp_path):
    data = text_pairs()
    finetune.fit('fake-text', data, epochs=1, batch_size=8, num_workers=0,
                 output_dir=str(tmp_path / 'out'), log=lambda m: None)
    state = tmp_path / 'out' / 'checkpoint-3' / 'trainer_state.pt'
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(InputError, match=r'trainer_state.pt cannot be read .*damaged'):
        finetune.fit(None, data, resume_from=str(tmp_path / 'out' / 'checkpoint-3'), log=lambda m: None)


def test_evaluation_data_of_one_class_is_refused():
    rows = [('the red dog', 'a'), ('the blue cat', 'a'), ('a big car', 'a')]
    with pytest.raises(InputError, match="one class \\('a'\\).*at least 2 classes"):
        finetune.evaluate(finetune.build_model('fake-text'), rows)
    with pytest.raises(InputError, match='one class'):
        finetune.fit('fake-text', text_pairs(), rows, batch_size=8, log=lambda m: None)


def test_spearman_on_scored_data_does_not_depend_on_row_order():
    scipy_stats = pytest.importorskip('scipy.stats')
    model = finetune.build_model('fake-text')
    pairs = [('the red dog', 'a red dog'), ('the blue cat', 'a cat'), ('a big car', 'the small car'),
             ('the sea', 'blue sea'), ('old man', 'new woman'), ('happy tree', 'sad tree')] * 3
    rows = [(a, b, s) for (a, b), s in zip(pairs, [0.0, 0.5, 1.0] * 6)]  # many ties in the scores
    values = set()
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(rows))
        values.add(round(finetune.evaluate(model, [rows[i] for i in order])['spearman'], 12))
    assert len(values) == 1
    a = model.encode([r[0] for r in rows])
    b = model.encode([r[1] for r in rows])
    cos = (a * b).sum(axis=1)
    assert values.pop() == pytest.approx(scipy_stats.spearmanr(cos, [r[2] for r in rows]).statistic, abs=1e-9)


def test_cli_errors_are_one_clean_message(tmp_path):
    from finetune.cli import main
    csv = tmp_path / 'pairs.csv'
    csv.write_text('query,doc\n' + '\n'.join(f'{q},{d}' for q, d in text_pairs()) + '\n')
    runner = CliRunner()
    result = runner.invoke(main, ['fit', '--model', 'fake-text', '--train-data', str(csv),
                                  '--metrics-log', str(tmp_path / 'm.txt')])
    assert result.exit_code == 2 and result.exception is None or isinstance(result.exception, SystemExit)
    assert 'error: MetricsLogger path: expected a file ending in .csv' in result.output
    assert 'Traceback' not in result.output
    for name in ('cat[blue].txt', 'a[/x]b.txt'):  # brackets are text, not markup
        result = runner.invoke(main, ['encode', '--model', 'fake-text', '--input', str(tmp_path / name),
                                      '--output', str(tmp_path / 'e.npy')])
        assert result.exit_code == 2, result.output
        assert name in result.output and 'Traceback' not in result.output
    result = runner.invoke(main, ['encode', '--model', 'fake-text', '--input', str(csv),
                                  '--output', str(tmp_path / 'no' / 'such' / 'dir' / 'e.npy')])
    assert result.exit_code == 2 and 'No such file or directory' in result.output, result.output


def test_messages_go_to_the_finetune_logger_unless_a_log_function_is_given(caplog):
    import logging
    with caplog.at_level(logging.INFO, logger='finetune'):
        finetune.fit('fake-text', text_pairs(), epochs=1, batch_size=8, num_workers=0)
    lines = [r.getMessage() for r in caplog.records if r.name == 'finetune']
    assert any(line.startswith('train data: train_data: 24 pairs rows') for line in lines)
    assert any(line.startswith('device cpu, precision') for line in lines)
    caplog.clear()
    mine = []
    with caplog.at_level(logging.INFO, logger='finetune'):
        finetune.fit('fake-text', text_pairs(), epochs=1, batch_size=8, num_workers=0, log=mine.append)
    assert not [r for r in caplog.records if r.name == 'finetune'] and len(mine) >= 2
    with pytest.raises(OptionError, match='log: expected a function'):
        finetune.fit('fake-text', text_pairs(), batch_size=8, log='print')


def test_a_subclass_of_the_trainer_overrides_one_step():
    """The Trainer's steps are overridable: here the loss is scaled, which the history shows."""
    from finetune.training import Trainer, TrainingConfig

    class Doubled(Trainer):
        def compute_loss(self, batch):
            return 2 * super().compute_loss(batch)
    config = TrainingConfig.from_arguments(epochs=1, batch_size=8, num_workers=0, seed=1, precision='fp32')
    plain = Trainer('fake-text', text_pairs(), config=config, log=lambda m: None).train()
    doubled = Doubled('fake-text', text_pairs(), config=config, log=lambda m: None).train()
    assert doubled.history[0]['loss'] == pytest.approx(2 * plain.history[0]['loss'], rel=1e-5)
    with pytest.raises(OptionError, match='batch_size: expected an integer >= 2, got 1'):
        TrainingConfig.from_arguments(batch_size=1)


def test_adam_steps_with_the_fused_kernel_unless_told_otherwise():
    from finetune.training.optim import make_optimizer
    params = [torch.nn.Parameter(torch.randn(3, 3))]
    assert make_optimizer('AdamW', [{'params': params, 'lr': 0.1}], None).defaults['fused'] is True
    chosen = make_optimizer('AdamW', [{'params': params, 'lr': 0.1}], {'foreach': True}).defaults
    assert chosen['foreach'] is True and not chosen['fused']
    assert not make_optimizer('adam', [{'params': params, 'lr': 0.1}], {'fused': False}).defaults['fused']
    assert make_optimizer('sgd', [{'params': params, 'lr': 0.1}], None).defaults['fused'] is True
    assert not make_optimizer('rmsprop', [{'params': params, 'lr': 0.1}], None).defaults.get('fused')
    # sparse gradients (an embedding with sparse=True): the fused kernels refuse them at the first step
    table = torch.nn.Embedding(10, 4, sparse=True)
    sgd = make_optimizer('sgd', [{'params': list(table.parameters()), 'lr': 0.1}], None, (table,))
    assert not sgd.defaults['fused']
    table(torch.tensor([1, 2])).sum().backward()
    sgd.step()  # steps: the plain kernel takes sparse gradients


def test_group_by_length_is_on_for_texts_and_can_be_turned_off(tmp_path):
    from finetune.cli import main
    said = []
    run = finetune.fit('fake-text', text_pairs(), epochs=1, batch_size=8, num_workers=0, log=said.append)
    assert any('similar length' in m for m in said) and run.config['group_by_length'] == 'auto'
    said.clear()
    run = finetune.fit('fake-image', coloured_squares(4, size=16), epochs=1, batch_size=8, num_workers=0,
                       group_by_length=True, log=said.append)
    assert any('not grouped by length' in m for m in said)  # labeled images: nothing to group
    csv = tmp_path / 'pairs.csv'
    csv.write_text('query,doc\n' + '\n'.join(f'{q},{d}' for q, d in text_pairs()) + '\n')
    result = CliRunner().invoke(main, ['fit', '--model', 'fake-text', '--train-data', str(csv), '--batch-size', '8',
                                       '--group-by-length', 'off', '--loss-option', 'mini_batch_size=3',
                                       '--output', str(tmp_path / 'out')])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / 'out' / 'model' / 'finetune_config.json').read_text())
    assert saved['training']['group_by_length'] is False
    assert saved['training']['loss_options'] == {'mini_batch_size': 3}
    with pytest.raises(OptionError, match='group_by_length'):
        finetune.fit('fake-text', text_pairs(), batch_size=8, group_by_length='yes')


def test_fp16_stops_when_the_loss_scaler_skips_every_update(monkeypatch):
    """Under fp16 an overflowing update is skipped, not a failure; but skipped updates without end mean the model
    no longer learns, so the run stops there with the NaN guard's message."""
    from accelerate import Accelerator

    from finetune.training import setup, trainer
    monkeypatch.setattr(setup, 'resolve_precision', lambda precision, device: 'fp16')
    monkeypatch.setattr(trainer, 'MAX_SKIPPED_FP16_STEPS', 3)
    monkeypatch.setattr(Accelerator, 'optimizer_step_was_skipped', property(lambda self: True))
    with pytest.raises(TrainingError, match=r'fp16 gradients overflowed on 3 updates in a row .* at epoch \d, '
                                            r'step 3; training stopped'):
        finetune.fit('fake-text', text_pairs(), epochs=4, batch_size=4, num_workers=0, log=lambda m: None)
    monkeypatch.setattr(Accelerator, 'optimizer_step_was_skipped', property(lambda self: False))
    run = finetune.fit('fake-text', text_pairs(), epochs=4, batch_size=4, num_workers=0, log=lambda m: None)
    assert len([h for h in run.history if 'loss' in h]) > 3


@pytest.mark.parametrize('mini_batch_size', [None, 2])
def test_a_short_last_accumulation_window_averages_over_its_own_batches(monkeypatch, mini_batch_size):
    """6 batches with 4 accumulation steps: the epoch's second window has 2 micro-batches, each weighted 1/2
    (not 1/4, which would halve that update's gradient)."""
    from accelerate import Accelerator

    from finetune import losses
    losses_seen, backward_seen = [], []
    real_forward, real_backward = losses.InfoNCELoss.forward, Accelerator.backward

    def forward(self, inputs):
        value = real_forward(self, inputs)
        losses_seen.append(value.item())
        return value

    def backward(self, loss, **kwargs):
        backward_seen.append(float(loss))
        return real_backward(self, loss, **kwargs)
    monkeypatch.setattr(losses.InfoNCELoss, 'forward', forward)
    monkeypatch.setattr(Accelerator, 'backward', backward)
    options = {'mini_batch_size': mini_batch_size} if mini_batch_size else None
    run = finetune.fit('fake-text', text_pairs(), epochs=1, batch_size=4, num_workers=0, precision='fp32',
                       gradient_accumulation_steps=4, loss_options=options, log=lambda m: None)
    assert len(run.history) == 2
    # (GradCache too scales the loss it backpropagates into the cached embeddings, once per batch)
    weights = [b / l for b, l in zip(backward_seen, losses_seen)]
    assert weights == pytest.approx([1 / 4] * 4 + [1 / 2] * 2)
    # the loss a step logs is the mean over its window, not its last micro-batch
    assert [h['loss'] for h in run.history] == pytest.approx([sum(losses_seen[:4]) / 4, sum(losses_seen[4:]) / 2])


def test_a_step_embeds_the_sides_of_one_backbone_joined_with_the_same_loss_and_gradients(monkeypatch):
    """A one-tower model embeds queries and documents as one batch (Backbone.join_batches), once; the loss and
    the gradients are those of embedding each side apart."""
    from finetune.data import get_kind
    from finetune.losses import build_loss
    from finetune.training.module import TrainingModule
    torch.manual_seed(0)
    model = finetune.build_model('fake-text', {'output_dim': 8})
    model.train()
    model.backbone.dropout.p = 0.0
    pairs = text_pairs()[:6]
    batch = get_kind('pairs').collate([(q, d, i) for i, (q, d) in enumerate(pairs)], model.preprocess,
                                      model.preprocess)
    assert batch['a']['input_ids'].shape[1] != batch['b']['input_ids'].shape[1]  # joining pads one side
    module = TrainingModule(model, build_loss('InfoNCE', None, 'pairs'), get_kind('pairs'))
    calls = []
    model.backbone.register_forward_hook(lambda m, args, out: calls.append(args[0]['input_ids'].shape[0]))
    joined = module(batch)
    joined.backward()
    assert calls == [12]
    got = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    monkeypatch.setattr(TrainingModule, 'joined', lambda self, batch: None)
    apart = module(batch)
    apart.backward()
    assert calls == [12, 6, 6]
    assert float(joined) == pytest.approx(float(apart), abs=1e-6)
    for name, grad in got.items():
        torch.testing.assert_close(grad, module.get_parameter(name).grad, atol=1e-6, rtol=1e-5, msg=name)
    monkeypatch.undo()
    module.eval()
    calls.clear()
    with torch.no_grad():
        module(batch)
    assert calls == [6, 6]  # out of training, the sides are embedded as given


def test_a_callback_failing_on_a_failed_fit_does_not_hide_the_fits_error(monkeypatch):
    from finetune.callbacks import Callback
    seen, said = [], []

    class Breaks(Callback):
        def on_fit_failed(self, state, error):
            seen.append((state.step, type(error).__name__))
            raise RuntimeError('the tracker is gone')
    nan_on_call(monkeypatch, 2)
    with pytest.raises(TrainingError, match='step 2'):
        finetune.fit('fake-text', text_pairs(), epochs=1, batch_size=8, num_workers=0, callbacks=[Breaks()],
                     log=said.append)
    assert seen == [(1, 'TrainingError')]
    assert any('Breaks.on_fit_failed failed too: RuntimeError: the tracker is gone' in line for line in said)


def test_a_csv_metrics_log_deleted_between_fits_gets_its_header_again(tmp_path):
    from types import SimpleNamespace
    path = tmp_path / 'log.csv'
    logger = MetricsLogger(str(path))
    state = SimpleNamespace(is_main_process=True, epoch=0, step=1, last_loss=0.5, learning_rate=1e-3,
                            samples_per_second=10.0)
    logger.on_step_end(state)
    path.unlink()  # gone before the next fit that reuses the logger
    logger.on_step_end(state)
    logger.on_evaluate(state, {'ndcg@10': 0.25})
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [r['event'] for r in rows] == ['step', 'evaluate'] and rows[1]['ndcg@10'] == '0.25'
    assert not [p for p in os.listdir(tmp_path) if p != 'log.csv']  # no temporary left
    other = SimpleNamespace(**{**vars(state), 'is_main_process': False})
    logger.on_step_end(other)  # another process of a launch writes nothing
    assert len(path.read_text().splitlines()) == 3
