"""Where the time of a fit() goes: build, setup, tokenization, forward, backward, optimizer, the rest.

    python benchmarks/profile_fit.py [--rows 512] [--precision fp32] [--group-by-length auto|off] [--top 25]

Profiles (cProfile) finetune.fit of all-minilm-l6-v2 on the first --rows WordNet pairs, batch 32, InfoNCE,
one epoch, with num_workers=0 so that tokenization runs in this process and shows up. Prints the share of each
part, then the profile's top lines by cumulative time.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault('HF_HUB_OFFLINE', '1')

#: (label, function name, file fragment): cumulative time of that function in the profile
PARTS = [
    ('setup (data, checks, loss, optimizer, engine)', 'setup', 'training/setup.py'),
    ('tokenization (the collate of each batch)', '__call__', 'data/batches.py'),
    ('forward (model + loss, under autocast)', 'compute_loss', 'training/trainer.py'),
    ('backward', 'backward', 'accelerate/accelerator.py'),
    ('optimizer step', 'step', 'accelerate/optimizer.py'),
    ('batch planning (sampler)', '_make_plan', 'finetune/sampling/no_duplicates.py'),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rows', type=int, default=512)
    parser.add_argument('--precision', default='fp32')
    parser.add_argument('--group-by-length', default='auto', choices=('auto', 'off'))
    parser.add_argument('--top', type=int, default=25)
    args = parser.parse_args()

    import finetune
    from bench_vs_sentence_transformers import TRAIN_CSV, first_pairs
    from finetune.training.hardware import cpu_name

    rows = first_pairs(TRAIN_CSV, args.rows)
    start = time.perf_counter()
    model = finetune.build_model('all-minilm-l6-v2')
    build = time.perf_counter() - start
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    finetune.fit(model, rows, loss='InfoNCE', validation_split=0, batch_size=32, precision=args.precision, device='cpu',
                 num_workers=0, progress=False, group_by_length='auto' if args.group_by_length == 'auto' else False,
                 log=lambda m: None)
    profile.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(profile)
    found = {}
    for (filename, _, name), (_, _, _, cumulative, _) in stats.stats.items():
        for label, function, fragment in PARTS:
            if name == function and fragment in filename:
                found[label] = found.get(label, 0.0) + cumulative
    print(f'all-minilm-l6-v2, {args.rows} WordNet pairs, batch 32, {args.precision}, group_by_length '
          f'{args.group_by_length}, num_workers 0; CPU {cpu_name()}')
    print(f'{"model build (outside fit)":48s} {build:7.2f} s')
    print(f'{"fit, total":48s} {total:7.2f} s')
    for label, _, _ in PARTS:
        seconds = found.get(label, 0.0)
        print(f'  {label:46s} {seconds:7.2f} s  {100 * seconds / total:5.1f}%')
    rest = total - sum(found.get(label, 0.0) for label, _, _ in PARTS[:5])
    print(f'  {"the rest (loop, guard, callbacks, ...)":46s} {rest:7.2f} s  {100 * rest / total:5.1f}%')
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats('cumulative').print_stats(args.top)
    print('\n'.join(line for line in out.getvalue().splitlines() if line.strip())[-6000:])


if __name__ == '__main__':
    main()
