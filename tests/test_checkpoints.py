"""Step checkpoints and exact resume (finetune/training/checkpoint.py, the Trainer's save and restore)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import finetune
from finetune.callbacks import Callback
from finetune.errors import InputError, OptionError
from finetune.training import checkpoint as ckpt

sys.path.insert(0, os.path.dirname(__file__))
from test_training import text_pairs  # noqa: E402

EXACT = dict(batch_size=8, device='cpu', precision='fp32', num_workers=0, seed=3, learning_rate=1e-3,
             log=lambda m: None)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    """Two epochs of 3 steps with a checkpoint after every step (all kept)."""
    out = tmp_path_factory.mktemp('uninterrupted')
    run = finetune.fit('fake-text', text_pairs(), epochs=2, output_dir=str(out), save_steps=1,
                       save_total_limit=10, **EXACT)
    return out, run, _weights(run.model)


def test_checkpoints_every_n_steps_and_at_epoch_ends_keep_the_last_few(tmp_path):
    run = finetune.fit('fake-text', text_pairs(), epochs=2, output_dir=str(tmp_path), save_steps=2,
                       **EXACT)
    # steps 1..6, 3 per epoch: step checkpoints at 2 and 4, epoch ends at 3 and 6; the last 2 are kept
    assert [step for step, _ in ckpt.list_checkpoints(str(tmp_path))] == [4, 6]
    assert sorted(os.listdir(tmp_path)) == ['checkpoint-4', 'checkpoint-6', 'model']
    state = ckpt.read_trainer_state(str(tmp_path / 'checkpoint-4'))
    assert (state['epoch'], state['batches_done'], state['step']) == (1, 1, 4)
    assert state['config']['batch_size'] == 8 and state['data_size'] == 24
    assert set(state['rng']) >= {'python', 'numpy', 'torch'}
    end = ckpt.read_trainer_state(str(tmp_path / 'checkpoint-6'))
    assert (end['epoch'], end['batches_done']) == (2, 0)
    assert len(run.history) == 6


@pytest.mark.parametrize('step', [2, 3, 4])  # mid first epoch, an epoch end, mid second epoch
def test_a_resumed_run_ends_with_the_weights_of_the_uninterrupted_one(uninterrupted, step, tmp_path):
    out, full, final = uninterrupted
    run = finetune.fit(None, text_pairs(), resume_from=str(out / f'checkpoint-{step}'),
                       output_dir=str(tmp_path), log=lambda m: None)
    _assert_same_weights(_weights(run.model), final)
    assert [h['step'] for h in run.history] == list(range(1, 7))
    assert [h['loss'] for h in run.history][step:] == pytest.approx([h['loss'] for h in full.history][step:],
                                                                     abs=1e-6)


def test_kill_9_then_resume_from_the_output_dir(uninterrupted, tmp_path):
    """A run killed with SIGKILL after step 4 resumes from its latest checkpoint (step 3: the step-4 one was
    never written) and ends exactly where the uninterrupted run ended."""
    _, _, final = uninterrupted
    script = tmp_path / 'killed.py'
    script.write_text(textwrap.dedent(f'''
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import finetune
        from finetune.callbacks import Callback
        from test_training import text_pairs

        class Kill(Callback):
            def on_step_end(self, state):
                if state.step == 4:
                    os.kill(os.getpid(), signal.SIGKILL)

        finetune.fit('fake-text', text_pairs(), epochs=2, output_dir={str(tmp_path / 'out')!r},
                     save_steps=1, save_total_limit=10, batch_size=8, device='cpu', precision='fp32', num_workers=0,
                     seed=3, learning_rate=1e-3, callbacks=[Kill()], log=lambda m: None)
    '''))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path / 'out'))] == [1, 2, 3]
    run = finetune.fit(None, text_pairs(), resume_from=str(tmp_path / 'out'), log=lambda m: None)
    _assert_same_weights(_weights(run.model), final)
    assert (tmp_path / 'out' / 'model').is_dir()  # output_dir, left out, came from the checkpoint


def test_settings_that_differ_from_the_checkpoint_are_listed(uninterrupted):
    out, _, _ = uninterrupted
    with pytest.raises(OptionError) as info:
        finetune.fit(None, text_pairs(), resume_from=str(out / 'checkpoint-2'), batch_size=4, learning_rate=0.5,
                     loss='CLIPLoss', precision='bf16', log=lambda m: None)
    message = str(info.value)
    assert "differ from the checkpoint's" in message
    for line in ('batch_size: given 4, checkpoint 8', 'learning_rate: given 0.5, checkpoint 0.001',
                 "loss: given 'CLIPLoss', checkpoint 'InfoNCE'", "precision: given 'bf16', checkpoint 'fp32'"):
        assert line in message
    with pytest.raises(OptionError, match=r'train_data: 16 rows, checkpoint 24'):
        finetune.fit(None, text_pairs()[:16], resume_from=str(out / 'checkpoint-2'), log=lambda m: None)


def test_left_out_settings_take_the_checkpoint_values_and_equal_ones_are_fine(uninterrupted, tmp_path):
    out, _, final = uninterrupted
    run = finetune.fit(None, text_pairs(), resume_from=str(out / 'checkpoint-5'), batch_size=8,
                       loss='MultipleNegativesRankingLoss', precision='auto', output_dir=str(tmp_path),
                       log=lambda m: None)  # an alias of the saved loss, 'auto': not differences
    assert run.config['batch_size'] == 8 and run.config['learning_rate'] == 1e-3 and run.config['seed'] == 3
    assert run.config['precision'] == 'fp32' and run.config['epochs'] == 2
    _assert_same_weights(_weights(run.model), final)


def test_resume_from_something_that_is_no_checkpoint(tmp_path):
    with pytest.raises(InputError, match='does not exist'):
        finetune.fit(None, text_pairs(), resume_from=str(tmp_path / 'nope'), log=lambda m: None)
    with pytest.raises(InputError, match='no checkpoint there'):
        finetune.fit(None, text_pairs(), resume_from=str(tmp_path), log=lambda m: None)


def test_output_dir_is_checked_before_the_first_step(tmp_path, monkeypatch):
    steps = []

    class Count(Callback):
        def on_step_end(self, state):
            steps.append(state.step)
    a_file = tmp_path / 'file.txt'
    a_file.write_text('x')
    for bad, message in ((a_file, 'is a file'), (a_file / 'sub', 'cannot be written')):
        with pytest.raises(OptionError, match=message):
            finetune.fit('fake-text', text_pairs(), output_dir=str(bad), callbacks=[Count()], **EXACT)
    monkeypatch.setattr(shutil, 'disk_usage', lambda path: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(OptionError, match=r'1 MiB free on its disk, but one checkpoint of this model needs about'):
        finetune.fit('fake-text', text_pairs(), output_dir=str(tmp_path / 'out'), callbacks=[Count()],
                     **EXACT)
    assert steps == []


def test_a_failed_checkpoint_write_is_logged_and_training_goes_on(tmp_path, monkeypatch):
    real = ckpt.save_checkpoint
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, 'No space left on device')
        return real(*args, **kwargs)
    monkeypatch.setattr(ckpt, 'save_checkpoint', flaky)
    logs = []
    run = finetune.fit('fake-text', text_pairs(), epochs=1, output_dir=str(tmp_path), save_steps=1,
                       **dict(EXACT, log=logs.append))
    assert len(run.history) == 3
    assert any('could not write the checkpoint' in line and 'No space left' in line for line in logs)
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [2, 3]


def test_a_failed_final_save_raises_and_the_error_holds_the_trained_model(tmp_path, monkeypatch):
    from finetune.training import Run, SaveError

    def refuse(self, directory):
        raise OSError(30, 'Read-only file system', directory)
    monkeypatch.setattr(Run, 'save', refuse)
    with pytest.raises(SaveError) as info:
        finetune.fit('fake-text', text_pairs(), epochs=1, output_dir=str(tmp_path), **EXACT)
    message = str(info.value)
    assert 'could not save the final model' in message and 'Read-only file system' in message
    assert 'error.run.save(' in message
    run = info.value.run
    assert run.model is not None and len(run.history) == 3
    monkeypatch.undo()
    run.save(str(tmp_path / 'elsewhere'))  # nothing trained is lost
    _assert_same_weights(_weights(finetune.load(str(tmp_path / 'elsewhere'))), _weights(run.model))
    assert not (tmp_path / '.finetune.lock').exists()  # the lock is given back however the run ends


def test_the_cli_exits_non_zero_when_the_final_save_fails(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from finetune.cli import main
    from finetune.training import Run
    data = tmp_path / 'pairs.csv'
    data.write_text('query,doc\n' + ''.join(f'{a},{b}\n' for a, b in text_pairs()))

    def refuse(self, directory):
        raise OSError(28, 'No space left on device', directory)
    monkeypatch.setattr(Run, 'save', refuse)
    result = CliRunner().invoke(main, ['fit', '--model', 'fake-text', '--train-data', str(data), '--output',
                                       str(tmp_path / 'out'), '--batch-size', '8', '--device', 'cpu',
                                       '--precision', 'fp32', '--num-workers', '0'])
    assert result.exit_code == 2, result.output
    assert 'could not save the final model' in result.output and 'No space left' in result.output
    assert 'model saved to' not in result.output


def test_a_checkpoint_of_the_first_format_resumes_at_its_epoch(uninterrupted, tmp_path):
    out, _, final = uninterrupted
    legacy = tmp_path / 'out' / 'checkpoint'
    shutil.copytree(out / 'checkpoint-3', legacy)  # the end of epoch 1
    state = torch.load(legacy / 'trainer_state.pt', weights_only=True)
    old = {'optimizer': state['optimizer'], 'scheduler': state['scheduler'], 'epoch': 1,
           'metrics_before': state['metrics_before']}
    torch.save(old, legacy / 'trainer_state.pt')
    run = finetune.fit(None, text_pairs(), epochs=2, resume_from=str(tmp_path / 'out'), **EXACT)
    assert [h['step'] for h in run.history] == [4, 5, 6]
    assert all(np.isfinite(h['loss']) for h in run.history)


def test_a_checkpoint_replaced_when_the_writer_was_killed_between_renames_still_resumes(uninterrupted, tmp_path):
    out, _, final = uninterrupted
    shutil.copytree(out / 'checkpoint-4', tmp_path / 'best.old')  # all a killed replacement of 'best' leaves
    run = finetune.fit(None, text_pairs(), resume_from=str(tmp_path / 'best'), output_dir=str(tmp_path / 'o'),
                       log=lambda m: None)
    _assert_same_weights(_weights(run.model), final)


def test_only_the_caller_turns_on_remote_code_for_a_resumed_model(uninterrupted, tmp_path, monkeypatch):
    out, _, _ = uninterrupted
    checkpoint, fresh = str(out / 'checkpoint-2'), dict(output_dir=str(tmp_path), log=lambda m: None)
    from finetune import artifacts
    asked = []
    real = artifacts.load
    monkeypatch.setattr(artifacts, 'load', lambda directory, trust_remote_code=False:
                        asked.append(trust_remote_code) or real(directory, trust_remote_code))
    finetune.fit(None, text_pairs(), resume_from=checkpoint, **fresh)
    finetune.fit(None, text_pairs(), resume_from=checkpoint, model_options={'trust_remote_code': True}, **fresh)
    assert asked == [False, True]
    with pytest.raises(OptionError, match='only trust_remote_code may be given.*not pooler'):
        finetune.fit(None, text_pairs(), resume_from=checkpoint, model_options={'pooler': 'max'}, **fresh)


# ---------------------------------------------------------------- files go only where the caller says


def _point_state_at(checkpoint, **config) -> None:
    """Rewrite the settings saved in `checkpoint`'s trainer state (as a checkpoint received from elsewhere)."""
    path = checkpoint / 'trainer_state.pt'
    state = torch.load(path, weights_only=True)
    state['config'].update(config)
    torch.save(state, path)


def test_a_resumed_run_never_writes_or_deletes_where_the_checkpoint_says(uninterrupted, tmp_path):
    out, _, final = uninterrupted
    victim = tmp_path / 'victim'  # a folder of someone else's checkpoints, named inside the received file
    for step in (1, 2, 3):
        shutil.copytree(out / f'checkpoint-{step}', victim / f'checkpoint-{step}')
    received = tmp_path / 'downloads' / 'checkpoint-4'
    shutil.copytree(out / 'checkpoint-4', received)
    _point_state_at(received, output_dir=str(victim), save_total_limit=1)
    logs = []
    run = finetune.fit(None, text_pairs(), resume_from=str(received), log=logs.append)
    _assert_same_weights(_weights(run.model), final)
    assert sorted(os.listdir(victim)) == ['checkpoint-1', 'checkpoint-2', 'checkpoint-3']  # untouched
    beside = tmp_path / 'downloads'
    assert (beside / 'model').is_dir() and run.config['output_dir'] == str(beside)
    # save_total_limit was not taken from the file either: the default (2) kept this run's last two
    assert [s for s, _ in ckpt.list_checkpoints(str(beside))] == [5, 6]
    assert any(f'resuming from {received}' in line for line in logs)
    elsewhere = tmp_path / 'mine'
    run = finetune.fit(None, text_pairs(), resume_from=str(out / 'checkpoint-4'), output_dir=str(elsewhere),
                       save_total_limit=3, log=lambda m: None)
    assert (elsewhere / 'model').is_dir() and [s for s, _ in ckpt.list_checkpoints(str(elsewhere))] == [5, 6]


def test_a_new_run_into_a_folder_of_another_runs_checkpoints_is_refused(tmp_path):
    out = tmp_path / 'out'
    finetune.fit('fake-text', text_pairs(), epochs=2, output_dir=str(out), save_steps=1, **EXACT)
    assert [s for s, _ in ckpt.list_checkpoints(str(out))] == [5, 6]
    with pytest.raises(OptionError) as info:
        finetune.fit('fake-text', text_pairs(), epochs=1, output_dir=str(out), save_steps=1, **EXACT)
    assert 'checkpoints of another run (checkpoint-5, checkpoint-6)' in str(info.value)
    assert 'overwrite_output_dir=True' in str(info.value)
    logs = []
    run = finetune.fit('fake-text', text_pairs(), epochs=1, output_dir=str(out), save_steps=1,
                       overwrite_output_dir=True, **dict(EXACT, log=logs.append))
    assert any('removed 2 checkpoint(s) of another run' in line for line in logs)
    # its own checkpoints are kept (before, the old run's higher steps made the limit delete each new one)
    assert [s for s, _ in ckpt.list_checkpoints(str(out))] == [2, 3]
    assert {ckpt.run_id_of(p) for _, p in ckpt.list_checkpoints(str(out))} == {run.config['run_id']}
    resumed = finetune.fit(None, text_pairs(), resume_from=str(out), log=lambda m: None)
    assert resumed.config['run_id'] == run.config['run_id']  # resume picks up the new run, not the old


def test_the_checkpoint_limit_removes_only_this_runs_checkpoints(uninterrupted, tmp_path):
    out, _, _ = uninterrupted
    for step in (1, 2, 3):
        shutil.copytree(out / f'checkpoint-{step}', tmp_path / f'checkpoint-{step}')
    mine = ckpt.run_id_of(str(tmp_path / 'checkpoint-1'))
    config = json.loads((tmp_path / 'checkpoint-2' / 'finetune_config.json').read_text())
    config['training']['run_id'] = 'someone-else'
    (tmp_path / 'checkpoint-2' / 'finetune_config.json').write_text(json.dumps(config))
    removed = ckpt.remove_old_checkpoints(str(tmp_path), 1, lambda run_id: run_id == mine)
    assert removed == [str(tmp_path / 'checkpoint-1')]
    assert sorted(os.listdir(tmp_path)) == ['checkpoint-2', 'checkpoint-3']


def test_a_model_folder_that_is_not_a_saved_model_is_refused_before_training(tmp_path):
    steps = []

    class Count(Callback):
        def on_step_end(self, state):
            steps.append(state.step)
    (tmp_path / 'model').mkdir()
    (tmp_path / 'model' / 'notes.md').write_text('mine')
    with pytest.raises(OptionError, match="model' exists and is not a saved finetune model; fit writes its final model there"):
        finetune.fit('fake-text', text_pairs(), output_dir=str(tmp_path), callbacks=[Count()], **EXACT)
    assert steps == [] and os.listdir(tmp_path / 'model') == ['notes.md']


def test_a_second_fit_into_a_folder_in_use_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path):
    out = tmp_path / 'out'
    script = tmp_path / 'busy.py'
    script.write_text(textwrap.dedent(f'''
        import sys, time
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import finetune
        from finetune.callbacks import Callback
        from test_training import text_pairs

        class Wait(Callback):
            def on_step_end(self, state):
                print('training', flush=True)
                time.sleep(120)

        finetune.fit('fake-text', text_pairs(), output_dir={str(out)!r}, batch_size=8, device='cpu',
                     precision='fp32', num_workers=0, callbacks=[Wait()], log=lambda m: None)
    '''))
    busy = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout.readline().strip() == 'training'
        with pytest.raises(OptionError) as info:
            finetune.fit('fake-text', text_pairs(), output_dir=str(out), **EXACT)
        assert f'in use by another fit (process {busy.pid} on' in str(info.value)
        assert '.finetune.lock' in str(info.value)
    finally:
        busy.kill()  # SIGKILL: the lock file stays, but nobody holds it any more
        busy.wait()
    assert (out / '.finetune.lock').exists()
    logs = []
    finetune.fit('fake-text', text_pairs(), output_dir=str(out), overwrite_output_dir=True,
                 **dict(EXACT, log=logs.append))
    assert any(f'took over the lock of process {busy.pid}' in line for line in logs)
    assert not (out / '.finetune.lock').exists() and (out / 'model').is_dir()


def test_a_trainer_state_of_random_bytes_is_one_line_naming_the_damaged_file(tmp_path):
    path = tmp_path / ckpt.TRAINER_STATE
    path.write_bytes(bytes(range(256)) * 3)
    with pytest.raises(InputError) as caught:
        ckpt.read_trainer_state(str(tmp_path))
    message = str(caught.value)
    assert '\n' not in message and str(path) in message and 'damaged' in message
    assert 'weights_only' not in message and 'torch.load' not in message
    path.write_bytes(b'')
    with pytest.raises(InputError, match='damaged'):
        ckpt.read_trainer_state(str(tmp_path))


# ---------------------------------------------------------------- resume means what it says


def test_resuming_with_another_model_name_is_refused_naming_both(uninterrupted):
    out, _, _ = uninterrupted
    with pytest.raises(OptionError, match=r"model='fake-image' with resume_from=.*the checkpoint trains "
                                          r"'fake-text'.*Pass model=None \(or 'fake-text'\)"):
        finetune.fit('fake-image', text_pairs(), resume_from=str(out / 'checkpoint-2'), log=lambda m: None)


def test_resuming_on_other_rows_of_the_same_size_is_refused_naming_them(uninterrupted, tmp_path):
    out, _, final = uninterrupted
    rows = text_pairs()
    rows[3], rows[7] = (rows[3][0], 'another doc'), (rows[7][0] + ' too', rows[7][1])
    with pytest.raises(OptionError, match=r'train_data: as many rows as the checkpoint.s, but 2 of them differ '
                                          r'\(rows 3, 7, counted from 0\)'):
        finetune.fit(None, rows, resume_from=str(out / 'checkpoint-2'), output_dir=str(tmp_path), log=lambda m: None)
    run = finetune.fit('fake-text', text_pairs(), resume_from=str(out / 'checkpoint-2'), output_dir=str(tmp_path),
                       log=lambda m: None)  # the same rows, and the same model named: fine
    _assert_same_weights(_weights(run.model), final)


def test_a_second_fit_in_another_thread_is_refused_while_the_first_runs():
    import threading
    started, release, errors = threading.Event(), threading.Event(), []

    class Hold(Callback):
        def on_step_end(self, state):
            started.set()
            release.wait(60)

    first = threading.Thread(target=lambda: finetune.fit('fake-text', text_pairs(), epochs=1, callbacks=[Hold()],
                                                         **EXACT))
    first.start()
    try:
        assert started.wait(120)
        with pytest.raises(OptionError, match=r'another fit\(\) is running in this process'):
            finetune.fit('fake-text', text_pairs(), **EXACT)
    finally:
        release.set()
        first.join(120)
    finetune.fit('fake-text', text_pairs(), **EXACT)  # free again


def test_only_the_main_process_tells_what_it_does(monkeypatch):
    logs = []
    monkeypatch.setenv('RANK', '1')
    finetune.fit('fake-text', text_pairs(), **dict(EXACT, log=logs.append))
    assert logs == []
    monkeypatch.setenv('RANK', '0')
    finetune.fit('fake-text', text_pairs(), **dict(EXACT, log=logs.append))
    assert any(line.startswith('train data: ') for line in logs)
