"""The engine of a run without a GPU: device names checked against the CUDA devices torch sees (pretended here),
cuda:N handed to accelerate, loader settings per device, and the rule for DistributedDataParallel's search for
unused parameters (a trial step), also across two gloo processes."""
from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest
import torch

import finetune
from finetune.backbone import batch_to
from finetune.errors import OptionError
from finetune.training import Trainer, TrainingConfig
from finetune.training.engine import make_engine, unused_parameters
from finetune.training.hardware import loader_settings, resolve_device

from launch import two_processes
from test_training import text_pairs


def _pretend_cuda(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: count > 0)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: count)


# ------------------------------------------------------------------------------ device names
def test_cuda_n_is_checked_against_the_devices_torch_sees(monkeypatch):
    _pretend_cuda(monkeypatch, 2)
    assert resolve_device('cuda:1') == 'cuda:1'
    assert resolve_device('CUDA:0') == 'cuda:0'
    assert resolve_device('cuda') == 'cuda'
    assert resolve_device('auto') == 'cuda'
    with pytest.raises(OptionError, match=r"device='cuda:3': only 2 CUDA devices: cuda:0, cuda:1\."):
        resolve_device('cuda:3')
    with pytest.raises(OptionError, match=r"'cuda:N' with N a device number .* Devices here: auto, cpu, cuda, "
                                          r"cuda:0, cuda:1"):
        resolve_device('cuda:one')
    with pytest.raises(OptionError, match=r"got 'gpu'\. .*Devices here: auto, cpu, cuda, cuda:0, cuda:1"):
        resolve_device('gpu')
    _pretend_cuda(monkeypatch, 1)
    with pytest.raises(OptionError, match=r"only 1 CUDA device: cuda:0\."):
        resolve_device('cuda:1')


def test_cuda_without_cuda_names_the_devices_that_work(monkeypatch):
    _pretend_cuda(monkeypatch, 0)
    assert resolve_device('auto') == 'cpu'
    for name in ('cuda', 'cuda:1'):
        with pytest.raises(OptionError, match=rf"device='{name}': CUDA is not available on this machine .*"
                                              r"Devices here: 'cpu' or 'auto'\."):
            resolve_device(name)
    with pytest.raises(OptionError, match="expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 3"):
        resolve_device(3)
    with pytest.raises(OptionError, match=r"device='cuda'"):
        finetune.fit('fake-text', text_pairs(), epochs=1, batch_size=4, device='cuda', log=lambda m: None)


class _Recorded:
    """Stands in for accelerate.Accelerator: records its arguments and the device accelerate would read."""
    made: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.environment_device = os.environ.get('ACCELERATE_TORCH_DEVICE')
        _Recorded.made.append(self)


def test_cuda_n_becomes_the_run_device_and_the_current_one(monkeypatch):
    import accelerate
    _pretend_cuda(monkeypatch, 2)
    chosen = []
    monkeypatch.setattr(torch.cuda, 'set_device', chosen.append)
    monkeypatch.setattr(accelerate, 'Accelerator', _Recorded)
    monkeypatch.delenv('ACCELERATE_TORCH_DEVICE', raising=False)
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    made = make_engine('cuda:1', 'fp16')
    assert chosen == [1] and made.environment_device == 'cuda:1'
    assert made.kwargs['cpu'] is False and made.kwargs['mixed_precision'] == 'fp16'  # accelerate's loss scaler
    assert made.kwargs['kwargs_handlers'][0].find_unused_parameters is False
    assert 'ACCELERATE_TORCH_DEVICE' not in os.environ  # only while accelerate reads it
    made = make_engine('cuda', 'bf16')
    assert chosen == [1] and made.environment_device is None and made.kwargs['mixed_precision'] == 'bf16'
    assert make_engine('cpu', 'fp32').kwargs == dict(made.kwargs, cpu=True, mixed_precision='no')


def test_cuda_n_under_a_launch_is_refused(monkeypatch):
    monkeypatch.setenv('LOCAL_RANK', '0')
    with pytest.raises(OptionError, match=r"device='cuda:1': under a distributed launch .*--gpu_ids 1.*"
                                          r"device='cuda' or 'auto'"):
        make_engine('cuda:1', 'fp32')


def test_each_engine_starts_from_a_fresh_state():
    """A single process's accelerate state is made again for each run: another precision, another device."""
    first = make_engine('cpu', 'fp32')
    second = make_engine('cpu', 'bf16')
    assert first.device.type == second.device.type == 'cpu'
    assert second.mixed_precision == 'bf16' and second.scaler is None


# ------------------------------------------------------------------------------ loader settings
def test_loader_settings_per_device(monkeypatch):
    monkeypatch.setattr(os, 'cpu_count', lambda: 16)
    assert loader_settings('cpu', ['text', 'text'], None) == (0, False)
    assert loader_settings('cpu', ['text', 'image'], None) == (4, False)
    assert loader_settings('cuda', ['text', 'text'], None) == (2, True)  # tokenizing off the training process
    assert loader_settings('cuda:1', ['image'], None) == (4, True)
    assert loader_settings('cuda', ['text'], 0) == (0, True)  # the caller's number stands
    assert loader_settings('cpu', ['image'], 3) == (3, False)
    assert loader_settings('cuda', ['image'], None, processes_here=8) == (1, True)  # 2 cores each
    monkeypatch.setattr(os, 'cpu_count', lambda: None)
    assert loader_settings('cuda', ['text'], None) == (1, True)


def test_a_cpu_run_keeps_its_loader_defaults():
    config = TrainingConfig.from_arguments(epochs=1, batch_size=4, device='cpu', progress=False)
    trainer = Trainer('fake-text', text_pairs(), config=config, log=lambda m: None)
    trainer.setup()
    assert trainer.loader.num_workers == 0 and trainer.loader.pin_memory is False
    assert trainer.watch.every == 1  # a CPU looks at every step


# ------------------------------------------------------------------------------ unused parameters
def _set_up(model, rows, **arguments) -> Trainer:
    config = TrainingConfig.from_arguments(epochs=1, device='cpu', precision='fp32', progress=False, **arguments)
    trainer = Trainer(model, rows, config=config, log=lambda m: None)
    trainer.setup()
    return trainer


def _image_rows():
    rng = np.random.default_rng(0)
    colours = {'red': (220, 30, 30), 'green': (30, 200, 40), 'blue': (30, 40, 220)}
    return [(f'a {name} car', np.clip(rng.normal(0, 20, (16, 16, 3)) + rgb, 0, 255).astype(np.uint8))
            for name, rgb in colours.items() for _ in range(4)]


def test_a_trial_step_finds_the_parameters_a_step_leaves_without_gradient():
    plain = _set_up('fake-text', text_pairs(), batch_size=4)
    batch = batch_to(plain.first_batch(), 'cpu')
    state = torch.get_rng_state()
    assert unused_parameters(plain.training_module, batch) == []
    assert torch.equal(torch.get_rng_state(), state)  # the trial draws nothing from the run's random state
    assert plain.training_module.training and all(p.grad is None for p in plain.training_module.parameters())
    assert plain.decide_unused_parameters() is False
    # a classifier head that a pairs loss does not read
    head = finetune.build_model('fake-text', {'head': 'cosine_classifier', 'head_options': {'num_classes': 3}})
    with_head = _set_up(head, text_pairs(), batch_size=4)
    assert unused_parameters(with_head.training_module, batch) == ['model.classifier.weight']
    assert with_head.decide_unused_parameters() is True
    # CLIP's loss keeps its own scale, unused where the model brings one
    clip = _set_up('fake-clip', _image_rows(), batch_size=3)
    assert unused_parameters(clip.training_module, batch_to(clip.first_batch(), 'cpu')) == ['loss.log_scale']


def test_the_search_can_be_forced_either_way():
    class Always(Trainer):
        find_unused_parameters = True
    config = TrainingConfig.from_arguments(epochs=1, batch_size=4, device='cpu', progress=False)
    trainer = Always('fake-text', text_pairs(), config=config, log=lambda m: None)
    trainer.setup()
    assert trainer.decide_unused_parameters() is True


@pytest.mark.slow
def test_two_processes_search_only_where_a_step_leaves_parameters_unused(tmp_path):
    """torchrun, 2 gloo processes: fake-text trains with the search off, fake-clip (whose loss's own scale gets no
    gradient) with it on; DistributedDataParallel fails a step if that choice is wrong."""
    script = tmp_path / 'unused.py'
    script.write_text(textwrap.dedent(f'''
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from finetune.training import Trainer, TrainingConfig
        from test_training import text_pairs
        from test_engine import _image_rows
        said = []
        for name, rows, size in (('fake-text', text_pairs(), 4), ('fake-clip', _image_rows(), 3)):
            config = TrainingConfig.from_arguments(epochs=1, batch_size=size, device='cpu', precision='fp32',
                                                   progress=False, num_workers=0)
            trainer = Trainer(name, rows, config=config, log=said.append)
            trainer.train()
            said.append(name + ' ' + str(trainer.accelerator.ddp_handler.find_unused_parameters))
        with open('{tmp_path}/rank' + os.environ['RANK'], 'w') as f:
            f.write('\\n'.join(said))
        import torch.distributed as dist
        if dist.is_initialized():  # leave the group before exit: gloo's threads otherwise abort the process
            dist.barrier()
            dist.destroy_process_group()
        os._exit(0)  # the results are written: skip the interpreter's teardown, where gloo's threads may abort
    '''))
    result = two_processes(str(script), 29561)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        said = (tmp_path / f'rank{rank}').read_text()
        assert 'fake-text False' in said and 'fake-clip True' in said
    # only the main process logs (the other would repeat its lines)
    assert 'a trial step leaves 1 without a gradient (e.g. loss.log_scale)' in (tmp_path / 'rank0').read_text()
    assert 'a trial step leaves' not in (tmp_path / 'rank1').read_text()


def test_cuda_training_leaves_cudnn_attention_out_and_other_devices_alone():
    """On CUDA the epochs run without cuDNN's attention kernel (its plan per sequence length made a first bf16
    epoch 5x slower on an H200); flash, memory-efficient and math stay; a CPU, or cudnn=True, changes nothing."""
    from finetune.training.hardware import attention_kernels
    flags = lambda: (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),  # noqa: E731
                     torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())
    before = flags()
    assert before[0]
    with attention_kernels(torch.device('cuda')):
        assert flags() == (False, True, True, True)
    assert flags() == before
    for device, cudnn in (('cpu', False), ('cuda:1', True), ('mps', False)):
        with attention_kernels(device, cudnn):
            assert flags() == before


def test_the_training_context_holds_the_attention_kernels_of_the_run(monkeypatch):
    import contextlib

    from finetune.training import trainer as trainer_module
    asked = []

    def recorded(device, cudnn=False):
        asked.append((str(device), cudnn))
        return contextlib.nullcontext()
    monkeypatch.setattr(trainer_module, 'attention_kernels', recorded)

    class WithCudnn(Trainer):
        cudnn_attention = True
    config = TrainingConfig.from_arguments(epochs=1, batch_size=8, num_workers=0, progress=False, device='cpu')
    Trainer('fake-text', text_pairs(), config=config, log=lambda m: None).train()
    WithCudnn('fake-text', text_pairs(), config=config, log=lambda m: None).train()
    assert asked == [('cpu', False), ('cpu', True)]
