"""The NaN guard: a failure on any one process stops every process, and the checks an accelerator defers (every
few steps instead of each) keep what the guard promises: no model evaluated, saved or returned holds a non-finite
update. Accelerator timing is not tested here; the deferred checks run on a CPU with ``finite_check_every``."""
from __future__ import annotations

import os
import textwrap

import pytest
import torch
from accelerate import Accelerator

import finetune
from finetune.training import Trainer, TrainingConfig, TrainingError
from finetune.training.guard import FiniteWatch, on_every_process

from launch import two_processes
from test_training import text_pairs


def test_one_process_agrees_with_itself():
    accelerator = Accelerator(cpu=True)
    assert on_every_process(torch.tensor(True), accelerator)
    assert not on_every_process(torch.tensor(False), accelerator)
    assert not on_every_process(torch.isfinite(torch.tensor(float('nan'))), accelerator)


def test_the_watch_reports_the_earliest_failure_once():
    watch = FiniteWatch(Accelerator(cpu=True), every=4)
    assert watch.look() is None  # nothing noted: no reading, no collective
    for step in (1, 2, 3):
        watch.note(0, torch.tensor(step != 3), step, epoch=0)
        watch.note(1, torch.tensor(step != 2), step, epoch=0)
    assert [watch.due(step) for step in range(1, 9)] == [False, False, False, True] * 2
    assert watch.look() == ('the gradients', 2, 0)
    assert watch.look() is None  # the flags start again
    watch.note(0, torch.tensor(False), 7, epoch=1)
    assert watch.look() == ('the loss (or a normalization statistic)', 7, 1)


class Deferred(Trainer):
    """The accelerator's schedule on a CPU: the flags are read every 4 optimizer steps."""
    finite_check_every = 4


def _config(**arguments) -> TrainingConfig:
    return TrainingConfig.from_arguments(epochs=1, batch_size=4, device='cpu', precision='fp32', num_workers=0,
                                         progress=False, seed=3, **arguments)


def test_deferred_checks_train_the_same_model_and_history():
    every_step = Trainer('fake-text', text_pairs(), config=_config(), log=lambda m: None).train()
    deferred_trainer = Deferred('fake-text', text_pairs(), config=_config(), log=lambda m: None)
    deferred = deferred_trainer.train()
    assert deferred_trainer.watch.every == 4
    assert [h['step'] for h in deferred.history] == [h['step'] for h in every_step.history] == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(h['loss'], float) for h in deferred.history)
    assert [h['loss'] for h in deferred.history] == [h['loss'] for h in every_step.history]
    # the gradient norm before clipping, read back with the loss
    norms = [h['grad_norm'] for h in every_step.history]
    assert all(isinstance(n, float) and n > 0 for n in norms)
    assert [h['grad_norm'] for h in deferred.history] == norms
    for a, b in zip(every_step.model.parameters(), deferred.model.parameters()):
        assert torch.equal(a, b)


def _nan_from_call(monkeypatch, first_bad: int) -> list:
    from finetune import losses
    calls = []
    real = losses.InfoNCELoss.forward

    def turns_nan(self, inputs):
        calls.append(1)
        value = real(self, inputs)
        return value * float('nan') if len(calls) >= first_bad else value
    monkeypatch.setattr(losses.InfoNCELoss, 'forward', turns_nan)
    return calls


def test_a_failure_found_late_goes_back_to_the_last_checked_weights(monkeypatch):
    """NaN from step 3 on; the flags are read before update 4: the updates of steps 3 (NaN) and the weights it
    broke are undone, back to the copy taken at the last look that found all finite (the start here)."""
    _nan_from_call(monkeypatch, 3)
    model = finetune.build_model('fake-text')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingError, match=r'the loss \(or a normalization statistic\) became NaN or infinite at '
                                            r'epoch 1, step 3; .*the weights it started from'):
        Deferred(model, text_pairs(), config=_config(learning_rate=1e-2), log=lambda m: None).train()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_failure_is_found_before_a_checkpoint_or_an_evaluation_writes_it(monkeypatch, tmp_path):
    """save_steps=2 between the reads every 4 steps: the checkpoint of step 2 reads the flags first and finds
    step 2's NaN, so no checkpoint of broken weights is written; last-good holds the weights of the start."""
    _nan_from_call(monkeypatch, 2)
    with pytest.raises(TrainingError, match=r'at epoch 1, step 2;'):
        Deferred('fake-text', text_pairs(), config=_config(save_steps=2, output_dir=str(tmp_path)),
                 log=lambda m: None).train()
    assert not (tmp_path / 'checkpoint-2').exists() and (tmp_path / 'last-good').is_dir()


def test_a_late_look_still_checks_every_step_at_four_steps_a_look(monkeypatch):
    """A run after a deferred look that passed: its copy is taken then, so a failure at step 6 goes back to
    the weights of step 3 (the copy before update 4)."""
    _nan_from_call(monkeypatch, 6)
    with pytest.raises(TrainingError, match=r'at epoch 1, step 6; .*the weights of step 3'):
        Deferred('fake-text', text_pairs(), config=_config(learning_rate=1e-2), log=lambda m: None).train()


@pytest.mark.slow
def test_two_processes_stop_together_when_one_turns_nan(tmp_path):
    """torchrun, 2 gloo processes: a flag false on one process only is false on both (accelerate's reduce has no
    'min'; a sum of failures is used), the watch agrees on the earliest failure, and a fit whose loss turns NaN
    on rank 1 alone stops both ranks at that step, for the loss."""
    script = tmp_path / 'nan.py'
    script.write_text(textwrap.dedent(f'''
        import os, sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import finetune
        from finetune import losses
        from finetune.training import TrainingError
        from finetune.training.guard import FiniteWatch, on_every_process
        from accelerate import Accelerator
        from test_training import text_pairs
        rank = int(os.environ['RANK'])
        accelerator = Accelerator(cpu=True)
        out = [str(on_every_process(torch.tensor(rank == 0), accelerator)),
               str(on_every_process(torch.tensor(True), accelerator))]
        watch = FiniteWatch(accelerator, every=4)
        watch.note(1, torch.tensor(rank == 1), 3, 0)  # rank 0: gradients at step 3
        watch.note(0, torch.tensor(rank == 0), 2, 0)  # rank 1: the loss at step 2
        out.append(repr(watch.look()))
        calls = []
        real = losses.InfoNCELoss.forward
        def rank1_nan(self, inputs):
            calls.extend([1] if self.training else [])  # not the trial step of engine.py
            value = real(self, inputs)
            return value * float('nan') if rank == 1 and len(calls) == 2 else value
        losses.InfoNCELoss.forward = rank1_nan
        try:
            finetune.fit('fake-text', text_pairs(), epochs=1, batch_size=4, device='cpu', precision='fp32',
                         num_workers=0, log=lambda m: None)
            out.append('no stop')
        except TrainingError as exc:
            out.append(str(exc).split(';')[0])
        with open('{tmp_path}/rank' + str(rank), 'w') as f:
            f.write('\\n'.join(out))
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()  # a clean exit, after the stop of both ranks
    '''))
    result = two_processes(str(script), 29563)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        lines = (tmp_path / f'rank{rank}').read_text().splitlines()
        assert lines == ['False', 'True', "('the loss (or a normalization statistic)', 2, 0)",
                         'the loss (or a normalization statistic) became NaN or infinite at epoch 1, step 2']


@pytest.mark.parametrize('max_grad_norm', [0.01, None])
def test_gradients_finite_gives_the_total_norm_before_clipping(max_grad_norm):
    from finetune.training.guard import gradients_finite
    layer = torch.nn.Linear(3, 2)
    layer.weight.grad = torch.tensor([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    layer.bias.grad = torch.tensor([0.0, 12.0])
    finite, norm = gradients_finite(layer, Accelerator(cpu=True), max_grad_norm, 'fp32')
    assert bool(finite) and float(norm) == pytest.approx(13.0)  # sqrt(9 + 16 + 144)
    clipped = torch.cat([layer.weight.grad.flatten(), layer.bias.grad]).norm()
    assert float(clipped) == pytest.approx(0.01 if max_grad_norm else 13.0, rel=1e-4)
    layer.bias.grad = torch.tensor([0.0, float('inf')])
    finite, _ = gradients_finite(layer, Accelerator(cpu=True), max_grad_norm, 'fp32')
    assert not bool(finite)


def test_a_sharded_models_unclipped_norm_is_not_logged_as_the_whole():
    """Without clipping the norm is of this process's shard (FSDP1's plain local gradients as well as FSDP2's
    DTensors): finiteness is still checked, but no norm is handed on as the model's."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from finetune.training.guard import gradients_finite
    layer = torch.nn.Linear(3, 2)
    layer.weight.grad, layer.bias.grad = torch.ones(2, 3), torch.ones(2)
    fsdp = SimpleNamespace(distributed_type=DistributedType.FSDP, scaler=None, device=torch.device('cpu'))
    finite, norm = gradients_finite(layer, fsdp, None, 'bf16')
    assert bool(finite) and norm is None
    single = SimpleNamespace(distributed_type=DistributedType.NO, scaler=None, device=torch.device('cpu'))
    assert float(gradients_finite(layer, single, None, 'bf16')[1]) == pytest.approx(8 ** 0.5)
