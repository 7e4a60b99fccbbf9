"""Speed and memory in one run: finetune vs sentence-transformers, GradCache, the frozen-feature cache.

    python benchmarks/bench_speed.py [--quick]

Runs, one after the other (never side by side: they would share the cores):

1. ``bench_vs_sentence_transformers.py --train-rows 1600``: training throughput of finetune.fit and of
   sentence-transformers' Trainer at each precision this CPU runs well (fp32; bf16 where it is native), with
   held-out nDCG@10 and peak RSS;
2. ``bench_gradcache.py``: batch 1,024 with GradCache against batch 32 (memory), and GradCache's time at an
   equal batch;
3. ``bench_feature_cache.py``: epoch time with and without the frozen-feature cache.

``--quick`` runs each at a small size (a check that they work, not figures to quote).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

PARTS = [
    ('bench_vs_sentence_transformers.py', ['--train-rows', '1600'], ['--train-rows', '256']),
    ('bench_gradcache.py', [], ['--large-batch', '128', '--equal-batch', '64']),
    ('bench_feature_cache.py', [], ['--images', '64']),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='small sizes: checks that each part runs')
    args = parser.parse_args()
    for script, full, quick in PARTS:
        path = os.path.join(HERE, script)
        if not os.path.exists(path):
            print(f'== {script}: not found, skipped')
            continue
        print(f'== {script} {" ".join(quick if args.quick else full)}', flush=True)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, path, *(quick if args.quick else full)], text=True,
                                capture_output=True)
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        print('\n'.join(lines))
        if result.returncode != 0:
            print(f'{script} failed (exit {result.returncode}):\n{result.stderr[-2000:]}')
        print(f'({time.perf_counter() - start:.0f} s)\n', flush=True)


if __name__ == '__main__':
    main()
