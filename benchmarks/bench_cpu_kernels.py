"""The CPU paths of fit (finetune/training/cpu_kernels.py) against torch's own modules, per thread count.

For 1 thread, 2, and every core of this machine: the forward and backward time of
* dropout on a MiniLM-sized activation (batch 32 x 128 tokens x 1536, the feed-forward width): ``nn.Dropout``
  (torch's ``bernoulli_``, a parallel kernel) against :class:`QuickDropout` (16 random bits per element from
  torch's ``random_``, a serial kernel);
* an embedding lookup of the same batch in a 30,522 x 384 word table, its gradient accumulated as the optimizer
  sees it: ``nn.Embedding`` (a dense table-sized gradient each time) against :class:`RowGradients`.
Each pair is timed interleaved (A, B, A, B, ...), median of the repeats, in one process: the ratio holds on a
loaded machine. The 'auto' rule of ``fit(cpu_kernels='auto')`` (:func:`finetune.training.cpu_kernels.choose`)
is printed beside what was measured.

    python benchmarks/bench_cpu_kernels.py [--repeats 15]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from torch import nn

from finetune.training.cpu_kernels import QuickDropout, RowGradients, choose


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def dropout_step(module: nn.Module, x: torch.Tensor) -> None:
    y = module(x)
    y.sum().backward()
    x.grad = None


def embedding_step(module: nn.Module, ids: torch.Tensor) -> None:
    module(ids).sum().backward()


def timed_pair(plain, quick, repeats: int) -> tuple[float, float]:
    """Median seconds of `plain()` and `quick()`, each run `repeats` times, interleaved."""
    times: tuple[list, list] = ([], [])
    for _ in range(2):  # warm-up
        plain(), quick()
    for _ in range(repeats):
        for k, fn in enumerate((plain, quick)):
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def measure(threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(32, 128, 1536, requires_grad=True)
    plain_dropout, quick_dropout = nn.Dropout(0.1).train(), nn.Dropout(0.1).train()
    patch = QuickDropout(quick_dropout).attach()
    try:
        d_plain, d_quick = timed_pair(lambda: dropout_step(plain_dropout, x), lambda: dropout_step(quick_dropout, x),
                                      repeats)
    finally:
        patch.detach()
    ids = torch.randint(0, 30522, (32, 128))
    plain_table, quick_table = nn.Embedding(30522, 384), nn.Embedding(30522, 384)
    rows = RowGradients(quick_table).attach()
    try:
        e_plain, e_quick = timed_pair(lambda: embedding_step(plain_table, ids),
                                      lambda: embedding_step(quick_table, ids), repeats)
    finally:
        rows.detach()
    return {'threads': threads, 'dropout': (d_plain, d_quick), 'embedding': (e_plain, e_quick),
            'auto': choose('auto', torch.device('cpu'), threads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=15)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    counts = sorted({1, min(2, cores), cores})
    print(f'CPU: {cpu_name()}, {cores} cores; torch {torch.__version__}; median of {args.repeats} interleaved runs')
    print(f'{"threads":>7} | {"dropout torch ms":>16} {"quick ms":>9} {"speed-up":>8} | {"embedding torch ms":>18} '
          f'{"rows ms":>8} {"speed-up":>8} | auto turns on')
    for threads in counts:
        m = measure(threads, args.repeats)
        (dp, dq), (ep, eq) = m['dropout'], m['embedding']
        print(f'{threads:>7} | {dp * 1e3:>16.2f} {dq * 1e3:>9.2f} {dp / dq:>7.2f}x | {ep * 1e3:>18.2f} {eq * 1e3:>8.2f} '
              f'{ep / eq:>7.2f}x | {", ".join(m["auto"]) or "nothing"}')


if __name__ == '__main__':
    main()
