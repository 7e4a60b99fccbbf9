"""The frozen-feature cache: epoch time with and without it, and peak memory, in one run.

Usage: python benchmarks/bench_feature_cache.py [--model resnet18] [--images 320] [--epochs 3] [--batch-size 32]

Trains `--model` (random weights, ``freeze=True``, a 128-dim projection head, NormalizedSoftmaxLoss: the
default for labeled images) on generated PNG images of 10 classes, once with ``feature_cache=False`` and once
with the default ``'auto'``, each in a child process of its own so that each peak resident memory (the
training process's; DataLoader workers not counted) is its own. Prints the CPU, the setup time (the cache's
fill included), the time of each epoch, the mean of epochs 2+ of each run, their ratio, and the peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def make_images(folder: str, n: int, size: int = 160, classes: int = 10, seed: int = 0) -> list[tuple[str, str]]:
    """`n` PNG files of `classes` colours with noise and a random square; (path, label) rows."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 255, (classes, 3))
    rows = []
    for i in range(n):
        label = i % classes
        image = np.clip(rng.normal(0, 30, (size, size, 3)) + palette[label], 0, 255).astype(np.uint8)
        x, y = rng.integers(0, size - 32, 2)
        image[y:y + 32, x:x + 32] = rng.integers(0, 255, 3)
        path = os.path.join(folder, f'{i:05d}.png')
        Image.fromarray(image).save(path)
        rows.append((path, f'class{label}'))
    return rows


def child(args) -> None:
    """One fit; prints one JSON line: setup seconds, per-epoch seconds, peak RSS in MiB."""
    import finetune
    from finetune.callbacks import Callback
    with open(args.rows) as f:
        rows = [tuple(r) for r in json.load(f)]
    marks: list[float] = []

    class Clock(Callback):
        def on_train_begin(self, state):
            marks.append(time.perf_counter())

        def on_epoch_end(self, state):
            marks.append(time.perf_counter())

    started = time.perf_counter()
    lines: list[str] = []
    finetune.fit(args.model, rows, model_options={'pretrained': False, 'freeze': True, 'output_dim': 128},
                 epochs=args.epochs, batch_size=args.batch_size, seed=0, callbacks=[Clock()], validation_split=0,
                 feature_cache=args.variant == 'cached' and 'auto', log=lines.append, progress=False)
    epochs = [b - a for a, b in zip(marks, marks[1:])]
    print(json.dumps({'setup': marks[0] - started, 'epochs': epochs,
                      'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      'cache_line': next((line for line in lines if 'feature cache' in line), '')}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='resnet18')
    parser.add_argument('--images', type=int, default=320)
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--variant', choices=('cached', 'uncached'), help=argparse.SUPPRESS)
    parser.add_argument('--rows', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return child(args)
    from finetune.training.hardware import cpu_name
    import torch
    print(f'CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads')
    print(f'{args.model} (random weights, freeze=True, output_dim=128), {args.images} generated 160 px PNG images '
          f'of 10 classes, batch {args.batch_size}, {args.epochs} epochs, NormalizedSoftmaxLoss')
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        rows_file = os.path.join(folder, 'rows.json')
        with open(rows_file, 'w') as f:
            json.dump(make_images(folder, args.images), f)
        for variant in ('uncached', 'cached'):
            command = [sys.executable, __file__, '--variant', variant, '--rows', rows_file, '--model', args.model,
                       '--epochs', str(args.epochs), '--batch-size', str(args.batch_size)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[variant] = json.loads(out.strip().splitlines()[-1])
    for variant, r in results.items():
        later = r['epochs'][1:]
        print(f'{variant:>9}: setup {r["setup"]:.1f} s; epochs ' + ', '.join(f'{s:.2f}' for s in r['epochs'])
              + f' s; epochs 2+ mean {np.mean(later):.3f} s; peak RSS {r["peak_rss_mib"]:.0f} MiB')
    print(f'cache: {results["cached"]["cache_line"]}')
    ratio = np.mean(results['uncached']['epochs'][1:]) / np.mean(results['cached']['epochs'][1:])
    print(f'epochs 2+: the cache is {ratio:.0f}x faster (target >= 20x)')


if __name__ == '__main__':
    main()
