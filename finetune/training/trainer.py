"""The Trainer: fit() as small steps that a subclass can override.

``Trainer(model, train_data, eval_data, config).train()`` is what :func:`finetune.fit` runs. Its steps, in
order: :meth:`~Trainer.setup` (device and precision, a checkpoint to resume, the model, the data and its
checks, the loss, the data loader, the optimizer and schedule, the accelerator, the output folder: the steps
of :class:`~finetune.training.setup.SetupSteps`, its base, in ``setup.py``), an evaluation before
training, the epochs of :meth:`~Trainer.training_step` calls with callbacks, evaluations and checkpoints
between them, and :meth:`~Trainer.finish` (the evaluation after training, the final save, the
:class:`~finetune.training.Run`). Override e.g. :meth:`~Trainer.compute_loss` for another objective,
:meth:`~Trainer.make_batch_sampler` for other batches, :meth:`~Trainer.evaluate` for other metrics,
:meth:`~Trainer.training_context` for what the epochs run in (the CPU paths attach there).

The engine is Hugging Face ``accelerate`` (devices, autocast, DistributedDataParallel); batches, gradient
accumulation and the schedule are the loop's own, so that a checkpoint can name exactly where it stands.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from typing import Any, Iterator

import torch

from .. import reporting
from ..backbone import batch_to
from ..callbacks import tell_failure
from ..data.batches import raise_worker_error
from ..errors import OptionError
from ..evaluation.evaluate import make_evaluation
from . import checkpoint as ckpt
from .cpu_kernels import CpuKernels
from .cpu_kernels import choose as choose_cpu_paths
from .gradcache import all_reduce_gradients
from .guard import gradients_finite
from .hardware import attention_kernels, rng_state, set_rng_state
from .setup import SetupSteps
from .sharding import FULL_OPTIMIZER_STATE, optimizer_state
from .state import Run, SaveError, TrainingError

#: fp16's loss scaler skips an update whose gradients overflow and halves its scale; this many skipped updates
#: in a row (the scale divided by 2**20) means the gradients overflow whatever the scale: the run stops
MAX_SKIPPED_FP16_STEPS = 20

#: held by the fit running in this process
_ONE_FIT = threading.Lock()


class Trainer(SetupSteps):
    """One training run of `model` (a registry name, a built model, or None to resume) on `train_data`: the
    steps of :class:`~finetune.training.setup.SetupSteps`, then the training loop, its evaluations and
    checkpoints, and the finish."""

    #: on CUDA, train with PyTorch's cuDNN attention kernel too (False: flash, memory-efficient and math only; see
    #: :func:`~finetune.training.hardware.attention_kernels`)
    cudnn_attention = False

    # ================================================================ training
    def train(self) -> Run:
        """Set up, evaluate, train, evaluate, save; returns the :class:`Run`. Raises TrainingError when a step
        turns non-finite (the model keeps its last good weights), InputError / OptionError for bad input, and
        OptionError when another fit runs in this process (fits share torch's global random state and
        accelerate's engine, so a second one at the same time would change the first one's results)."""
        if not _ONE_FIT.acquire(blocking=False):
            raise OptionError('another fit() is running in this process (another thread); fits share torch\'s '
                              'global random state and accelerate\'s engine, so two at once would change each '
                              'other\'s results. Run them one after another, or in separate processes.')
        try:
            self.setup()
            return self.train_set_up()
        except BaseException as error:  # the callbacks release what they opened (trackers end their runs)
            tell_failure(getattr(self, 'callbacks', None) or [], getattr(self, 'state', None), error, self.say)
            raise
        finally:
            self.release_output_dir()
            _ONE_FIT.release()

    def train_set_up(self) -> Run:
        """Everything of :meth:`train` after :meth:`setup`."""
        reporting.start(self)  # the run report: the eval embeddings before and after, each step's figures
        self.chooser.start()
        saved_dims = (self.resume_state or {}).get('metrics_dims')
        if saved_dims:  # a resumed run measured its base already
            self.metrics['dims'] = {int(d): dict(m) for d, m in saved_dims.items()}
        else:
            self.measure_dims('before')
        if self.eval_data is not None and self.accelerator.is_main_process:
            self.say(_metric_line('before', self.metrics['before'], self.eval_data.data_kind))
        self.measure_test('before')
        self._fire('on_train_begin')
        self.training_module.model.train()
        # steps whose loss (and gradient norm, or None) is not read back yet
        self.unread_losses: list[tuple[dict, torch.Tensor, torch.Tensor | None]] = []
        self.grad_norm: torch.Tensor | None = None  # the last update's gradient norm before clipping (on the device)
        self.samples, self.started = 0, time.perf_counter()
        self.last_step_end, self.step_seconds = self.started, None
        self.skipped_in_a_row = 0
        try:
            with self.training_context():
                for epoch in range(self.state.epoch, self.config.epochs):
                    self.state.epoch = epoch
                    self.run_epoch(epoch)
                    if self.state.should_stop:
                        break
        finally:
            self._fire('on_train_end')
        return self.finish()

    def training_context(self) -> contextlib.AbstractContextManager:
        """The context the epochs run in: the place where the CPU paths, and anything like them, attach to the
        model for training only. Called once, right before the first epoch; what it returns is left after the
        last one, an error included. Returns an ExitStack of the contexts already entered: the
        :class:`~finetune.training.cpu_kernels.CpuKernels` (cheaper embedding gradients and dropout on a CPU;
        nothing elsewhere) and, on CUDA, the attention kernels (:func:`~finetune.training.hardware.
        attention_kernels`: no cuDNN attention unless ``cudnn_attention``). Override it to add to that stack
        (``stack = super().training_context()``, then ``stack.enter_context(...)``), or to return another context
        (``contextlib.nullcontext()``: torch's own modules). Raises what entering a context raises, the ones entered before it left again."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(attention_kernels(self.accelerator.device, self.cudnn_attention))
            if self.full_copy is None:  # sharded (FSDP) weights keep torch's own modules
                kernels = stack.enter_context(CpuKernels(self.training_module.model, self.accelerator.device,
                                                         self.config.cpu_kernels))
                if self.accelerator.device.type == 'cpu':
                    used = ', '.join(kernels.names) or "none, torch's own modules"
                    self.say(f'CPU paths (cpu_kernels={self.config.cpu_kernels!r}, {torch.get_num_threads()} '
                             f'threads): {used}')
            return stack.pop_all()

    def run_epoch(self, epoch: int) -> None:
        """One epoch of steps, then its callbacks, evaluation and checkpoint."""
        accumulation = self.config.gradient_accumulation_steps
        batches = self.epoch_batches(epoch)
        # this epoch's own count: a no-duplicates epoch may need a batch more or less than the first one did
        count = math.ceil(len(self.batch_sampler) / self.accelerator.num_processes)
        window_losses: list[torch.Tensor] = []
        for index, batch in batches:
            last = index + 1 == count
            start = index - index % accumulation  # the gradient is the mean over the window's micro-batches
            self.window = max(1, min(accumulation, count - start))
            window_losses.append(self.training_step(batch, sync=(index + 1) % accumulation == 0 or last))
            self.state.batches_done = index + 1
            self.samples += self.train_data.data_kind.batch_size_of(batch) * self.accelerator.num_processes
            if (index + 1) % accumulation == 0 or last:
                self.after_step(self.step_loss(window_losses), epoch_end=last)
                window_losses = []
                if self.state.should_stop:
                    break
        self.look()
        note = getattr(self.loss, 'epoch_note', None)  # a loss's own count for the epoch (a guide's masked negatives)
        if callable(note) and (line := note()):
            self.say(f'epoch {epoch + 1}: {line}')
        self._fire('on_epoch_end')
        self._maybe_evaluate()
        self.state.epoch, self.state.batches_done = epoch + 1, 0
        self.save_checkpoint()
        self.state.epoch = epoch

    def step_loss(self, losses: list[torch.Tensor]) -> torch.Tensor:
        """The loss a step logs: the mean over its accumulation window's micro-batches and over the processes
        (on the device; nothing is read back here)."""
        mean = torch.stack([value.float() for value in losses]).mean()
        if self.accelerator.num_processes > 1:
            mean = self.accelerator.reduce(mean, reduction='mean')
        return mean

    def epoch_batches(self, epoch: int) -> Iterator[tuple[int, Any]]:
        """``(index in the epoch, batch)`` of `epoch`; a resumed epoch starts after its done batches, with the
        random generators as the checkpoint left them and each batch's views drawn from its own seed (whatever the
        number of workers), so the run goes on exactly as it would have."""
        self.skipper.set_epoch(epoch)  # passed on to the batch sampler and to the seeds of the batches
        resumed = self.resume_state is not None and epoch == int(self.resume_state['epoch'])
        skip = int(self.resume_state['batches_done']) if resumed else 0
        self.skipper.skip = skip
        if resumed and skip == 0 and 'rng' in self.resume_state:
            set_rng_state(self.resume_state['rng'])  # before the iterator draws its seed, as the run did
        iterator = iter(self.loader)
        if resumed and skip > 0 and 'rng' in self.resume_state:
            set_rng_state(self.resume_state['rng'])  # the iterator of this epoch drew its seed long ago
        return enumerate(iterator, start=skip)

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The loss of one batch (already on the device), under autocast."""
        with self.accelerator.autocast():
            return self.module(batch)

    def training_step(self, batch: Any, sync: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch; with `sync`, also the gradient check, clipping and the
        optimizer and schedule step. A non-finite loss, statistic or gradient stops the run (see :meth:`stop`):
        on a CPU at once, on an accelerator at the next :meth:`look`. Returns the loss (on the device)."""
        raise_worker_error(batch)
        on_host = self.accelerator.device.type != 'cpu'
        self.host_batch = batch if on_host else None  # length groups and chunks are cut there (module.py)
        self.training_module.host_batch = self.host_batch
        batch = batch_to(batch, self.accelerator.device)
        if self.cached_step is not None:
            value = self.cached_forward_backward(batch, sync)
        else:
            quiet = self.accelerator.no_sync(self.module) if not sync and self.accelerator.num_processes > 1 \
                else contextlib.nullcontext()
            with quiet:
                value = self.compute_loss(batch)
                self.check_finite(value)
                self.accelerator.backward(value / self.window)
        if sync:
            self.check_gradients()
            if self.watch.due(self.state.step + 1):  # every step on a CPU
                self.look()
                # weights just found good; it is called every watch.every steps, so its budget is of that time
                between = None if self.step_seconds is None else self.step_seconds * self.watch.every
                self.guard.before_update(self.state.step, between)
            self.optimizer.step()
            self.count_skipped_update()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return value.detach()

    def count_skipped_update(self) -> None:
        """Under fp16, stop (see :meth:`stop`) after :data:`MAX_SKIPPED_FP16_STEPS` updates in a row that the loss
        scaler skipped for overflowing gradients: the model no longer learns, however long the run goes on."""
        if self.precision != 'fp16':
            return
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if self.accelerator.optimizer_step_was_skipped else 0
        if self.skipped_in_a_row >= MAX_SKIPPED_FP16_STEPS:
            self.stop(f'the fp16 gradients overflowed on {self.skipped_in_a_row} updates in a row (the loss scaler '
                      f'skipped each)')

    def check_finite(self, value: torch.Tensor) -> None:
        """Note whether the loss and the normalization statistics are finite (:class:`~finetune.training.guard.
        FiniteWatch`); where every step is looked at (a CPU), stop now (see :meth:`stop`) when not on some
        process, before the backward."""
        finite = torch.isfinite(value.detach()).all()
        buffers = self.guard.buffers_finite()
        finite = finite if buffers is None else finite & buffers.to(finite.device, non_blocking=True)
        self.watch.note(0, finite, self.state.step + 1, self.state.epoch)
        if self.watch.every == 1:
            self.look()

    def check_gradients(self) -> None:
        """Clip the gradients (``max_grad_norm``) and note whether they are finite; where every step is looked
        at, stop now when not (see :meth:`check_finite`)."""
        finite, self.grad_norm = gradients_finite(self.module, self.accelerator, self.config.max_grad_norm,
                                                  self.precision)
        if finite is not None:
            self.watch.note(1, finite, self.state.step + 1, self.state.epoch)
        if self.watch.every == 1:
            self.look()

    def look(self) -> None:
        """Read back the finiteness flags noted since the last look (one wait for the device, one collective
        between processes): stop (see :meth:`stop`) at the first step that went non-finite on some process;
        else the losses of the steps since join the history. Every process calls it at the same points: every
        ``watch.every`` steps, each epoch's end, before each evaluation, checkpoint and the final save."""
        failure = self.watch.look()
        if failure is not None:
            what, step, epoch = failure
            self.unread_losses = []
            self.stop(f'{what} became NaN or infinite', at=(epoch, step))
        unread, self.unread_losses = getattr(self, 'unread_losses', []), []
        if unread:
            losses = [value.float() for _, value, _ in unread]
            read = torch.stack(losses + [n.float() for _, _, n in unread if n is not None]).tolist()  # one wait
            values, norms = read[:len(losses)], iter(read[len(losses):])
            for (entry, _, norm), value in zip(unread, values):
                entry['loss'] = value
                if norm is not None:
                    entry['grad_norm'] = next(norms)
                self.state.history.append(entry)
            if self.state._last_loss is unread[-1][1]:
                self.state.last_loss = values[-1]

    def sync_model(self) -> None:
        """Before the model is evaluated or written: :meth:`look`, and under FSDP the full copy refreshed from the
        shards (every process takes part in both)."""
        self.look()
        if self.full_copy is not None:
            self.full_copy.refresh(self.module)

    def cached_forward_backward(self, batch: dict, sync: bool) -> torch.Tensor:
        """GradCache's forward and backward of one micro-batch (:mod:`~finetune.training.gradcache`). Its passes
        run outside DistributedDataParallel; with `sync`, the gradients are averaged over the processes here."""
        device = self.accelerator.device
        step = self.cached_step
        value, sides = step.loss(batch, device, self.host_batch)
        self.check_finite(value)
        step.backpropagate(value, sides, device)
        if sync and self.accelerator.num_processes > 1:
            all_reduce_gradients(self.training_module, self.accelerator.num_processes)
        return value.detach()

    def after_step(self, value: torch.Tensor, epoch_end: bool) -> None:
        """Bookkeeping after an optimizer step: history, callbacks, evaluation, a step checkpoint."""
        s = self.state
        s.step += 1
        s.learning_rate = self.scheduler.get_last_lr()[0]
        now = time.perf_counter()
        s.samples_per_second = self.samples / max(1e-9, now - self.started)
        self.step_seconds, self.last_step_end = now - self.last_step_end, now
        entry = {'epoch': s.epoch, 'step': s.step, 'loss': None}
        norm, self.grad_norm = self.grad_norm, None
        if self.watch.every == 1:  # read at once where reading costs nothing
            entry['loss'] = s.last_loss = float(value)
            if norm is not None:
                entry['grad_norm'] = float(norm)
            s.history.append(entry)
        else:  # read back, with the flags, at the next look; s.last_loss reads it when asked
            s.last_loss = value
            self.unread_losses.append((entry, value, norm))
        self._fire('on_step_end')
        self._maybe_evaluate()
        save_steps = self.config.save_steps
        if save_steps and s.step % save_steps == 0 and not epoch_end:  # an epoch end saves anyway
            self.save_checkpoint()

    def stop(self, what: str, at: tuple[int, int] | None = None) -> None:
        """Go back to the last good state, save it as ``output_dir/last-good`` (a model to load, not a checkpoint
        to resume: its optimizer state belongs to the update it undoes) and raise TrainingError. `at` is the
        ``(epoch, step)`` that failed (from 0 and from 1; default: the step under way)."""
        self.guard.restore()
        if self.full_copy is not None:
            self.full_copy.refresh(self.module)
        s = self.state
        epoch, step = at if at is not None else (s.epoch, s.step + 1)
        where = f'epoch {epoch + 1}, step {step}'
        kept = ('the weights it started from' if self.guard.kept_step == 0 and self.resume_state is None else
                f'the weights of step {self.guard.kept_step}, the last good copy (one is kept every '
                f'{self.guard.every * self.watch.every} step(s))')
        saved = ''
        if self.config.output_dir is not None and self.accelerator.is_main_process:
            from ..artifacts import save_model
            path = os.path.join(self.config.output_dir, 'last-good')
            save_model(self.unwrapped, path, metrics=self.metrics, extra={'training': self.run_config()})
            saved = f' That model is saved in {path} (load it with finetune.load).'
        raise TrainingError(f'{what} at {where}; training stopped, and the model holds {kept}, with their '
                            f'normalization statistics.{saved} Lower learning_rate, use precision="fp32", or check '
                            f'the data.')

    # ================================================================ evaluation and checkpoints
    def evaluate(self, data=None, dim: int | None = None) -> dict[str, Any]:
        """Metrics on the eval data, or on `data` (computed by the main process, shared with the others); with
        `dim`, of the embeddings cut to their leading `dim` dimensions."""
        was_training = self.unwrapped.training
        self.unwrapped.eval()
        try:
            data = self.eval_data if data is None else data
            prepared = next((e for e in self.evaluations if e.data is data), None)  # eval or guard data: read once
            prepared = prepared or make_evaluation(self.unwrapped, data, check_files=False)
            metrics = prepared.run(ks=self.config.ks, dim=dim) if self.accelerator.is_main_process else {}
        finally:
            self.unwrapped.train(was_training)
        if self.accelerator.num_processes > 1:  # every process sees the same metrics, so callbacks agree
            from accelerate.utils import broadcast_object_list
            box = [metrics]
            broadcast_object_list(box, from_process=0)
            metrics = box[0]
        return metrics

    def trainer_state(self, optimizer: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything :meth:`restore` needs to continue this run from now; `optimizer` is the optimizer state
        when it is gathered already (under FSDP, by every process: :func:`~finetune.training.sharding.
        optimizer_state`)."""
        s = self.state
        layout = {} if optimizer is None else {'optimizer_layout': FULL_OPTIMIZER_STATE}
        return {**layout, 'optimizer': self.optimizer.state_dict() if optimizer is None else optimizer,
                'scheduler': self.scheduler.state_dict(),
                'epoch': s.epoch, 'batches_done': s.batches_done, 'step': s.step, 'rng': rng_state(),
                'config': self.run_config(), 'data_size': len(self.train_data),
                'data_fingerprints': self.data_fingerprints(), 'history': list(s.history),
                'metrics_before': dict(self.metrics.get('before', {})),
                'metrics_test_before': dict(self.metrics.get('test', {}).get('before', {})),
                'validation_rows': self.validation_rows,
                'validation_parts': getattr(self, 'validation_parts', None),  # several datasets: held out of each
                'loss_state': {k: v.detach().cpu() for k, v in self.training_module.loss.state_dict().items()}
                if self.full_copy is None else None,
                'metrics_dims': {d: {k: v for k, v in m.items() if k == 'before'}
                                 for d, m in self.metrics.get('dims', {}).items()}}

    def run_config(self) -> dict[str, Any]:
        """The settings this run trains with, as resolved (loss, learning rate, precision, kind); fixed once set
        up, so computed once (describing the data reads every row)."""
        if getattr(self, '_run_config', None) is not None:
            return dict(self._run_config)
        out = self.config.to_dict()
        out.update(run_id=self.run_id, loss=getattr(self.loss, 'by_dataset', None) or self.loss.name,
                   learning_rate=self.learning_rate, precision=self.precision,
                   steps_per_epoch=self.steps_per_epoch, data=self.train_data.describe(),
                   cpu_paths=list(choose_cpu_paths(self.config.cpu_kernels, self.accelerator.device)
                                  if self.full_copy is None else ()))
        if not hasattr(self.train_data, 'parts'):  # several datasets: each of its own kind, as detected
            out['data_kind'] = self.train_data.kind
        self._run_config = out
        return dict(out)

    def save_checkpoint(self) -> str | None:
        """A step checkpoint in ``output_dir/checkpoint-<step>`` (the oldest beyond ``save_total_limit``
        removed). A failed write is logged and training goes on; returns the path, or None."""
        output_dir = self.config.output_dir
        if output_dir is None:
            return None
        path = ckpt.checkpoint_dir(output_dir, self.state.step)
        self.look()  # a non-finite step stops the run here, never as a failed write
        try:
            self._checkpoint_to(path, self.metrics)
            if self.accelerator.is_main_process:
                ckpt.remove_old_checkpoints(output_dir, self.config.save_total_limit, self.is_ours)
        except Exception as exc:  # noqa: BLE001 - a full disk must not end a long run
            self.say(f'warning: could not write the checkpoint {path} ({type(exc).__name__}: {exc}); training goes '
                     f'on')
            return None
        return path

    def _checkpoint_to(self, directory: str, metrics: dict) -> None:
        self.sync_model()
        gathered = optimizer_state(self.module, self.optimizer) if self.full_copy is not None else None
        if self.accelerator.is_main_process:
            ckpt.save_checkpoint(self.unwrapped, directory, self.trainer_state(gathered), metrics,
                                 self.run_config())
        self.accelerator.wait_for_everyone()

    def measure_dims(self, when: str) -> None:
        """With Matryoshka dimensions (``loss_options={'matryoshka_dims': [...]}``) and eval data: the metrics at
        each trained size, ``metrics['dims'][size][when]`` (`when`: 'before' or 'after'); the full size is
        ``metrics[when]`` itself."""
        dims = getattr(self.loss, 'matryoshka_dims', None)
        if not dims:
            return
        self.unwrapped.trained_dims = tuple(dims)  # the sizes it is trained at go with the model
        if self.eval_data is None:
            return
        table = self.metrics.setdefault('dims', {})
        for dim in dims:
            table.setdefault(dim, {})[when] = self.metrics[when] if dim == self.model.output_dim else \
                self.evaluate(dim=dim)
            if self.accelerator.is_main_process:
                self.say(_metric_line(f'{when} at {dim} dimensions', table[dim][when], self.eval_data.data_kind))

    def measure_test(self, when: str) -> None:
        """With test data: its metrics on the base (`when` 'before') and on the model handed back ('after'), in
        ``metrics['test'][when]``. Test data chooses nothing: its change is the gain to report."""
        if self.test_data is None:
            return
        saved = (self.resume_state or {}).get('metrics_test_before') if when == 'before' else None
        table = self.metrics.setdefault('test', {})
        table[when] = dict(saved) if saved else self.evaluate(self.test_data)
        if self.accelerator.is_main_process:
            self.say(_metric_line(f'test data {when}', table[when], self.test_data.data_kind))

    def finish(self) -> Run:
        """The evaluation after training and the final model in ``output_dir/model``. A failed final save raises
        :class:`~finetune.training.SaveError`, which holds the Run (``error.run.model``: nothing trained is lost)."""
        self.sync_model()
        self.unwrapped.eval()
        self.chooser.finish()
        self.measure_dims('after')
        if self.chooser.active:  # the eval data chose the model: its "after" is not a held-out figure
            self.metrics['selected_on'] = {'data': 'validation split' if self.validation_rows else 'eval_data',
                                           'rows': len(self.eval_data)}
        if self.eval_data is not None and self.accelerator.is_main_process:
            chosen = f' (chosen on this {self.metrics["selected_on"]["data"]})' if self.chooser.active else ''
            self.say(_metric_line(f'after{chosen}', self.metrics['after'], self.eval_data.data_kind))
        self.measure_test('after')
        run = Run(self.unwrapped, self.metrics, self.state.history, self.train_data.describe(), self.run_config())
        reporting.finish(self, run)  # run.report_data; output_dir/report.html
        if self.config.output_dir is not None and self.accelerator.is_main_process:
            target = os.path.join(self.config.output_dir, 'model')
            try:
                run.save(target)
            except Exception as exc:  # noqa: BLE001 - the trained model must not be lost with the file
                raise SaveError(f'could not save the final model to {target} ({type(exc).__name__}: {exc}); the '
                                f'trained model is kept in the error: error.run.model, saved with '
                                f'error.run.save(another_folder)', run) from exc
        self._fire('on_fit_end', run)
        return run

    # ================================================================ helpers
    def _fire(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self.state, *args)

    def _maybe_evaluate(self) -> None:
        if not self.state._eval_requested:
            return
        self.state._eval_requested = False
        if self.eval_data is None:
            return
        self.sync_model()
        metrics = self.chooser.candidate()
        self.state.history.append({'epoch': self.state.epoch, 'step': self.state.step, 'eval': metrics})
        self._fire('on_evaluate', metrics)


def _metric_line(label: str, metrics: dict, kind) -> str:
    shown = [k for k in kind.summary_metrics if k in metrics]
    return f'{label}: ' + ', '.join(f'{k} {metrics[k]:.4f}' for k in shown)
