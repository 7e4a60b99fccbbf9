"""Why a first bf16 / fp16 fit on CUDA was slower than fp32 (docs/gpu.md#measured-on-one-h200): times each phase of
finetune's fit (set-up and base evaluation, first step, the other steps, the end) at each precision, first, again, and
after a sentence-transformers run, then profiles one bf16 fit. On the device: bash benchmarks/device/run.sh
benchmarks/device/phases.py 2048."""
import os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch
import gpu_check as g
from finetune.callbacks import Callback

DEVICE = g.DEVICE if torch.cuda.is_available() else 'cpu'
g.DEVICE = DEVICE
if DEVICE == 'cpu':
    for name in ('synchronize', 'reset_peak_memory_stats', 'empty_cache'):
        setattr(torch.cuda, name, lambda *a, **k: None)
    torch.cuda.max_memory_allocated = lambda *a, **k: 0
import transformers
transformers.utils.logging.set_verbosity_error()


class Steps(Callback):
    def __init__(self):
        self.times = []
    def on_train_begin(self, state):
        self.begin = time.perf_counter()
    def on_step_end(self, state):
        self.times.append(time.perf_counter())


def ours(rows, precision, label, batch=64):
    from finetune.training import Trainer, TrainingConfig
    steps = Steps()
    config = TrainingConfig.from_arguments(device=DEVICE, epochs=1, learning_rate=3e-5, warmup_ratio=0.1,
                                           scheduler='linear', max_grad_norm=1.0, progress=False, loss='InfoNCE',
                                           batch_size=batch, precision=precision)
    torch.cuda.synchronize()
    started = time.perf_counter()
    trainer = Trainer(g.minilm(), rows, config=config, callbacks=[steps], log=lambda m: None)
    trainer.train()
    torch.cuda.synchronize()
    end = time.perf_counter()
    t = steps.times
    gaps = sorted(b - a for a, b in zip(t, t[1:]))
    print(f'{label:34s} {precision:5s} total {end - started:6.2f} s: set-up+base eval {steps.begin - started:5.2f}, '
          f'first step {t[0] - steps.begin:5.2f}, steps 2..{len(t)} {t[-1] - t[0]:5.2f} (median gap '
          f'{1000 * gaps[len(gaps) // 2]:.0f} ms, max {1000 * gaps[-1]:.0f} ms), after {end - t[-1]:5.2f}; '
          f'threads {torch.get_num_threads()}, tf32 {torch.backends.cuda.matmul.allow_tf32}, '
          f'workers {trainer.loader.num_workers}', flush=True)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
    rows = g.first_pairs(g.TRAIN_CSV, n)
    precisions = ('fp32', 'bf16', 'fp16') if DEVICE != 'cpu' else ('fp32', 'bf16')
    for p in precisions:
        ours(rows[:256], p, 'warm-up')
    for p in precisions:
        ours(rows, p, 'ours, no sentence-transformers yet')
    for p in precisions:
        ours(rows, p, 'ours, again')
    try:
        secs, _, _ = g.sentence_transformers_fit(rows, 'fp32', 64)
        print(f'sentence-transformers fp32 {secs:.2f} s', flush=True)
    except Exception as exc:
        print('ST failed', type(exc).__name__, exc)
    for p in precisions:
        ours(rows, p, 'ours, after sentence-transformers')
    if DEVICE != 'cpu':
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            ours(rows[:1024], 'bf16', 'ours bf16 under the profiler')
        print(prof.key_averages().table(sort_by='cpu_time_total', row_limit=25, max_name_column_width=60))


main()
