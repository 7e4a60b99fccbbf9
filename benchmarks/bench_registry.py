"""Cold-start cost of listing and describing models, against bare `import torch` in the same run.

    python benchmarks/bench_registry.py [--repeats 3]

Each figure is the median wall time of a fresh interpreter; the ratio to `import torch` (the floor any
torch library pays) is what to compare across machines.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

SNIPPETS = {
    'import torch (baseline)': 'import torch',
    'import finetune': 'import finetune',
    'list_models()': 'import finetune; finetune.list_models()',
    'describe_models()': ('import io, finetune; from rich.console import Console; '
                          'finetune.describe_models(console=Console(file=io.StringIO()))'),
    "list_models('timm:*')": "import finetune; finetune.list_models('timm:*')",
    'finetune models (CLI)': None,
}


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    cli = [sys.executable, '-m', 'finetune.cli', 'models']
    results = {}
    for label, code in SNIPPETS.items():
        cmd = cli if code is None else [sys.executable, '-c', code]
        results[label] = statistics.median(wall(cmd) for _ in range(args.repeats))
    base = results['import torch (baseline)']
    print(f'{"what":28s} {"seconds":>8s} {"x import torch":>14s}')
    for label, seconds in results.items():
        print(f'{label:28s} {seconds:8.2f} {seconds / base:14.2f}')


if __name__ == '__main__':
    main()
