"""The trainer under FSDP, on two CPU processes (gloo) with torch's FSDP2.

accelerate (1.16) turns FSDP on for GPU backends only, so the test hands its engine the FSDP plugin and state
itself: the plugin reads the settings ``accelerate launch --config_file examples/fsdp.yaml`` puts in the
environment of each process. Everything after that is accelerate's and torch's own FSDP2: the model sharded by
``accelerator.prepare``, the trainer's full copy for evaluation and files, its optimizer state gathered into
checkpoints and sharded again on resume."""
from __future__ import annotations

import os

import pytest
import torch

from finetune.errors import OptionError
from finetune.training.sharding import check_shardable

from launch import two_processes

SCRIPT = '''
import contextlib, os, sys, torch
sys.path.insert(0, {tests!r})
import finetune
from finetune.training import Trainer, TrainingConfig
from finetune.training import checkpoint as ckpt
from finetune.training.engine import make_engine
from test_training import text_pairs


class Sharded(Trainer):
    def make_accelerator(self):
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
        accelerator = make_engine(self.device, self.precision)
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from examples/fsdp.yaml's settings
        accelerator.state.distributed_type = DistributedType.FSDP
        return accelerator


class Replicated(Trainer):
    def training_context(self):  # torch's own modules, as under FSDP
        return contextlib.nullcontext()


def run(kind, out=None, **more):
    config = TrainingConfig.from_arguments(epochs=2, batch_size=4, device='cpu', precision='fp32', num_workers=0,
                                           progress=False, eval_every=2, output_dir=out, **more)
    trainer = kind('fake-text', text_pairs(), text_pairs(), config=config, log=lambda m: None)
    result = trainer.train()
    with torch.no_grad():
        weights = torch.cat([p.detach().reshape(-1) for p in result.model.parameters()])
    return trainer, result, weights


folder = {folder!r}
rank = os.environ['RANK']
sharded, first, weights = run(Sharded, folder + '/fsdp')
assert sharded.full_copy is not None and sharded.unwrapped is sharded.full_copy.model
assert all(type(p).__name__ == 'DTensor' for p in sharded.training_module.parameters())  # sharded in training
_, plain, plain_weights = run(Replicated)
_, resumed, resumed_weights = run(Sharded, resume_from=folder + '/fsdp/checkpoint-3')
state = ckpt.read_trainer_state(folder + '/fsdp/checkpoint-3')
torch.save({{'fsdp': weights, 'ddp': plain_weights, 'resumed': resumed_weights,
            'losses': [[h['loss'] for h in r.history if 'loss' in h] for r in (first, plain)],
            'after': [r.metrics['after'] for r in (first, plain)],
            'layout': state.get('optimizer_layout'), 'moments': len(state['optimizer'].get('state', {{}}))}},
           folder + '/rank' + rank + '.pt')
torch.distributed.barrier()
torch.distributed.destroy_process_group()
'''


CONFIG = os.path.join(os.path.dirname(__file__), '..', 'examples', 'fsdp.yaml')


def fsdp_settings() -> dict[str, str]:
    """The FSDP settings ``accelerate launch --config_file examples/fsdp.yaml`` gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env
    args = launch_command_parser().parse_args(['--config_file', CONFIG, '-m', 'finetune', 'fit'])
    args, _, _ = _validate_launch_command(args)
    return {k: v for k, v in prepare_multi_gpu_env(args).items() if k.startswith('FSDP_')}


def test_the_config_file_launches_fsdp2_on_every_family():
    settings = fsdp_settings()
    assert settings['FSDP_VERSION'] == '2' and settings['FSDP_AUTO_WRAP_POLICY'] == 'SIZE_BASED_WRAP'
    assert settings['FSDP_STATE_DICT_TYPE'] == 'FULL_STATE_DICT'


@pytest.mark.slow
def test_fsdp_trains_evaluates_saves_and_resumes_like_data_parallel(tmp_path):
    script = tmp_path / 'fsdp.py'
    script.write_text(SCRIPT.format(tests=os.path.dirname(__file__), folder=str(tmp_path)))
    result = two_processes(str(script), 29567, **fsdp_settings())
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1)]
    for found in ranks:
        # sharded and replicated training agree (up to the order of the sums), and so do their evaluations
        torch.testing.assert_close(found['fsdp'], found['ddp'], rtol=1e-5, atol=1e-6)
        assert found['losses'][0] == pytest.approx(found['losses'][1], rel=1e-5)
        assert found['after'][0] == pytest.approx(found['after'][1], rel=1e-5)
        # the checkpoint of epoch 1 holds the optimizer state whole; resuming from it ends where the run ended
        assert found['layout'] == 'full, by parameter name' and found['moments'] > 0
        torch.testing.assert_close(found['resumed'], found['fsdp'], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ranks[0]['fsdp'], ranks[1]['fsdp'])  # every process holds the whole model
    assert (tmp_path / 'fsdp' / 'model' / 'model.safetensors').is_file()


def test_gradcache_is_refused_under_fsdp():
    class Cached:
        mini_batch_size = 8
    with pytest.raises(OptionError, match=r"'mini_batch_size' \(GradCache\): .*Under FSDP leave mini_batch_size "
                                          r"out"):
        check_shardable(Cached())
    check_shardable(object())
