"""Per-step overhead of finetune.fit() against a bare PyTorch loop on the same model and batches, same run.

    python benchmarks/bench_fit_overhead.py [--steps 30] [--batch-size 16] [--max-length 64] [--rounds 2]
                                            [--precision all|fp32|bf16] [--num-workers 0]

Both train all-minilm-l6-v2 (a fresh copy per run, same seed) on the same WordNet (query, doc) batches
on the CPU: the batches of finetune's own no-duplicates sampler, tokenized once for the bare loop. The
bare loop does what fit() does by default and nothing more: InfoNCE forward on both sides, backward,
gradient clipping to norm 1.0, AdamW (same learning rate), the same linear warmup/decay schedule, and
zero_grad. With --num-workers 0 (the default here) fit() tokenizes each batch in its loop; that cost is
part of its overhead and is shown apart. fit()'s step times come from a callback (one mark per
on_step_end); the first --skip steps of each run are discarded. The rounds alternate which of the two runs first; the figures
are the median over rounds of each run's mean ms/step, and the overhead is (fit - bare) / bare.

bf16 is measured only where the CPU has native bf16 (AVX-512 BF16 or AMX), and in a child process:
accelerate's state keeps the first mixed precision a process used.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')

from finetune.callbacks import Callback  # noqa: E402

MODEL = 'all-minilm-l6-v2'
TRAIN_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'examples', 'data', 'wordnet_train.csv')
TARGET_PERCENT = 10.0


def distinct_pairs(path: str, count: int) -> list[tuple[str, str]]:
    """The first `count` (query, doc) rows of `path` whose query and doc are both new, so that the
    no-duplicates sampler packs them into exactly count / batch_size full batches."""
    seen_queries, seen_docs, rows = set(), set(), []
    with open(path, newline='', encoding='utf-8') as f:
        reader = csv.reader(f)
        next(reader)  # header
        for query, doc in reader:
            if query in seen_queries or doc in seen_docs:
                continue
            seen_queries.add(query)
            seen_docs.add(doc)
            rows.append((query, doc))
            if len(rows) == count:
                return rows
    raise SystemExit(f'{path} has only {len(rows)} distinct pairs; lower --steps or --batch-size.')


class StepMarks(Callback):
    """A fit() callback keeping a perf_counter mark at train begin and at each step end."""

    def __init__(self):
        self.marks: list[float] = []

    def on_train_begin(self, state) -> None:
        self.marks = [time.perf_counter()]

    def on_step_end(self, state) -> None:
        self.marks.append(time.perf_counter())


def ms_per_step(marks: list[float], skip: int) -> float:
    """Mean duration of the steps after the first `skip`; marks[0] is the start, marks[k] the end of step k."""
    steps = len(marks) - 1
    return (marks[steps] - marks[skip]) / (steps - skip) * 1000.0


def linear_schedule(total_steps: int, warmup_steps: int):
    """LR factor per step: linear warmup from 1/warmup to 1, then linear decay to 0 at total_steps."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, 1.0 - (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return factor


def bare_loop(model, batches: list[dict], learning_rate: float, precision: str, seed: int,
              max_grad_norm: float = 1.0, warmup_ratio: float = 0.1) -> list[float]:
    """Train `model` on pre-tokenized `batches` with a plain loop; returns the step marks."""
    import torch

    from finetune.losses import LossInputs, build_loss

    torch.manual_seed(seed)
    loss_fn = build_loss('InfoNCE', None, 'pairs')
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    total = len(batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total, int(warmup_ratio * total)))
    autocast = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if precision == 'bf16' \
        else contextlib.nullcontext
    model.train()
    marks = [time.perf_counter()]
    for batch in batches:
        with autocast():
            inputs = LossInputs(anchors=model(batch['a']), positives=model(batch['b']), labels=batch['groups'])
            loss = loss_fn(inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
    return marks


def measure(args, precision: str) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    import finetune
    from finetune.data import load_data
    from finetune.data.batches import Collator, RowsDataset

    hf_logging.disable_progress_bar()  # the 'Loading weights' bar of each fresh model
    model_options = {'collate_options': {'max_length': args.max_length}}
    train = load_data(distinct_pairs(TRAIN_CSV, args.steps * args.batch_size), 'train_data', kind='pairs')

    def fresh_model():
        torch.manual_seed(args.seed)
        return finetune.build_model(MODEL, model_options)

    # the batches fit() will see: its sampler (same seed, epoch 0) and its collator, run once here
    sampler = train.data_kind.batch_sampler(train, args.batch_size, args.seed, 4)
    if hasattr(sampler, 'set_epoch'):
        sampler.set_epoch(0)
    order = list(sampler)
    if len(order) != args.steps or any(len(b) != args.batch_size for b in order):
        raise SystemExit(f'the sampler made {len(order)} batches, expected {args.steps} of {args.batch_size}')
    tokenizer_model = fresh_model()
    collate = Collator(train.kind, tokenizer_model.preprocess, tokenizer_model.preprocess)
    rows = RowsDataset(train)
    started = time.perf_counter()
    batches = [collate([rows[i] for i in indices]) for indices in order]
    tokenize_ms = (time.perf_counter() - started) / len(batches) * 1000.0
    del tokenizer_model
    tokens = statistics.mean(b['a']['input_ids'].shape[1] + b['b']['input_ids'].shape[1] for b in batches) / 2

    runs: dict[str, list[float]] = {'bare loop': [], 'fit()': []}

    def run_bare() -> None:
        marks = bare_loop(fresh_model(), batches, args.learning_rate, precision, args.seed)
        runs['bare loop'].append(ms_per_step(marks, args.skip))

    def run_fit() -> None:
        timer = StepMarks()
        finetune.fit(fresh_model(), train, None, loss='InfoNCE', validation_split=0, epochs=1, batch_size=args.batch_size,
                     learning_rate=args.learning_rate, device='cpu', precision=precision,
                     num_workers=args.num_workers, seed=args.seed, callbacks=[timer], progress=False,
                     log=lambda message: None)
        if len(timer.marks) != args.steps + 1:
            raise SystemExit(f'fit() ran {len(timer.marks) - 1} steps, expected {args.steps}')
        runs['fit()'].append(ms_per_step(timer.marks, args.skip))

    for r in range(args.rounds):
        for run in ((run_fit, run_bare) if r % 2 == 0 else (run_bare, run_fit)):
            run()

    bare, ours = statistics.median(runs['bare loop']), statistics.median(runs['fit()'])
    overhead = (ours - bare) / bare * 100.0
    print(f'precision {precision}: {MODEL}, {args.steps} steps x batch {args.batch_size} (first {args.skip} '
          f'discarded), max_length {args.max_length} (mean {tokens:.1f} tokens/text), lr {args.learning_rate:g}, '
          f'{torch.get_num_threads()} threads, fit() num_workers {args.num_workers}, {args.rounds} rounds')
    for name, values in runs.items():
        print(f'  {name:10s} {statistics.median(values):8.1f} ms/step (runs: '
              + ', '.join(f'{v:.1f}' for v in values) + ')')
    print(f'  overhead of fit(): {ours - bare:+.1f} ms/step = {overhead:+.1f}% '
          f'({"within" if overhead <= TARGET_PERCENT else "OVER"} the {TARGET_PERCENT:g}% target); '
          + (f'of that, tokenizing a batch in the loop costs {tokenize_ms:.1f} ms' if args.num_workers == 0
             else f'tokenizing a batch costs {tokenize_ms:.1f} ms, in fit()\'s worker process(es)'))


def main() -> None:
    from finetune.training import cpu_supports_bf16
    from finetune_transformers.backbone import HFTextBackbone

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--max-length', type=int, default=64)
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--skip', type=int, default=3, help='warm-up steps discarded from each run')
    parser.add_argument('--learning-rate', type=float, default=HFTextBackbone.default_learning_rate)
    parser.add_argument('--precision', choices=('all', 'fp32', 'bf16'), default='all',
                        help="'all': fp32, then bf16 where the CPU has native bf16")
    parser.add_argument('--num-workers', type=int, default=0, help="fit()'s DataLoader worker processes")
    parser.add_argument('--seed', type=int, default=42)
    args = parser.parse_args()
    if args.steps <= args.skip:
        parser.error(f'--steps must be larger than --skip ({args.skip})')

    if args.precision != 'all':
        measure(args, args.precision)
        return
    measure(args, 'fp32')
    if not cpu_supports_bf16():
        print('precision bf16: skipped: this CPU has no native bf16 (no AVX-512 BF16 / AMX, e.g. AVX2 only), '
              'where bf16 autocast is extremely slow and the figure would say nothing about fit().')
        return
    child = [sys.executable, os.path.abspath(__file__), '--precision', 'bf16']
    for name in ('steps', 'batch_size', 'max_length', 'rounds', 'skip', 'learning_rate', 'num_workers', 'seed'):
        child += ['--' + name.replace('_', '-'), str(getattr(args, name))]
    sys.stdout.flush()
    subprocess.run(child, check=True)


if __name__ == '__main__':
    main()
