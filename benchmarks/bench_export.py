"""Encode throughput and retrieval quality of all-MiniLM-L6-v2 as torch fp32, ONNX fp32, ONNX int8 and, where it
is installed, sentence-transformers' own ONNX backend: the same texts, one run each, on this CPU.

    python benchmarks/bench_export.py [--eval-data examples/data/wordnet_eval.csv] [--batch-size 32]

The exports go through `finetune.export` with the held-out pairs as eval data, so each passed the parity gate
(cosine and metrics) on them; then every runtime encodes every distinct query and document once (texts/s), and
`finetune.evaluate` gives each its retrieval metrics on the same pairs.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')

HERE = os.path.dirname(os.path.abspath(__file__))
METRICS = ('ndcg@10', 'mrr@10', 'recall@10')


class _STEncoder:
    """sentence-transformers' model as finetune.evaluate sees a model."""

    def __init__(self, model):
        self.model, self.name, self.modality = model, 'sentence-transformers onnx', 'text'

    def check_file(self, path):
        return None

    def encode(self, items, batch_size=32):
        return self.model.encode(list(items), batch_size=batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True)


def _st_onnx(model_dir: str):
    """(sentence-transformers' ONNX backend model, None) or (None, why it cannot run here)."""
    try:
        from sentence_transformers import SentenceTransformer
        return _STEncoder(SentenceTransformer(model_dir, backend='onnx', device='cpu', local_files_only=True)), None
    except Exception as exc:  # noqa: BLE001 - any failure is a reason to print, not a figure to fake
        return None, f'{type(exc).__name__}: {str(exc).splitlines()[0][:200]}'


def _row(label: str, model, texts: list[str], eval_data: str, batch_size: int) -> dict:
    import finetune
    model.encode(texts[:batch_size], batch_size=batch_size)  # warm-up: sessions, thread pools
    start = time.perf_counter()
    model.encode(texts, batch_size=batch_size)
    seconds = time.perf_counter() - start
    metrics = finetune.evaluate(model, eval_data, batch_size=batch_size)
    return {'runtime': label, 'texts/s': len(texts) / seconds, **{m: metrics[m] for m in METRICS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--eval-data', default=os.path.join(HERE, '..', 'examples', 'data', 'wordnet_eval.csv'))
    parser.add_argument('--batch-size', type=int, default=32)
    args = parser.parse_args()

    import torch

    import finetune
    from finetune.data import load_data
    from finetune_transformers.specs import packaged_minilm

    data = load_data(args.eval_data, 'eval_data')
    texts = list(dict.fromkeys([*data.a, *data.b]))
    print(f'CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads '
          f'{torch.get_num_threads()}; {len(texts)} distinct texts from {args.eval_data}; batch size {args.batch_size}')
    with tempfile.TemporaryDirectory() as tmp:
        artifact = os.path.join(tmp, 'minilm')
        finetune.save_model(finetune.build_model('all-minilm-l6-v2'), artifact)
        rows = [_row('torch fp32', finetune.load(artifact), texts, args.eval_data, args.batch_size)]
        for quantize in (None, 'int8'):
            start = time.perf_counter()
            try:
                folder = finetune.export(artifact, quantize=quantize, eval_data=args.eval_data, log=print)
            except finetune.ExportError as exc:  # the gate refused it: its figures are the result
                print(f'ONNX {quantize}: refused by the parity gate, not measured: {exc}')
                continue
            print(f'  export took {time.perf_counter() - start:.1f} s')
            rows.append(_row(f'ONNX {quantize or "fp32"}', finetune.load(folder), texts, args.eval_data,
                             args.batch_size))
        st, why = _st_onnx(packaged_minilm())
        if st is None:
            print(f"sentence-transformers' ONNX backend: not run here ({why})")
        else:
            rows.append(_row('sentence-transformers ONNX', st, texts, args.eval_data, args.batch_size))
    base = rows[0]
    print(f"\n| runtime | texts/s | speed-up | {' | '.join(METRICS)} |\n|---|---|---|" + '---|' * len(METRICS))
    for r in rows:
        print(f"| {r['runtime']} | {r['texts/s']:.0f} | {r['texts/s'] / base['texts/s']:.2f}x | "
              + ' | '.join(f'{r[m]:.4f}' for m in METRICS) + ' |')


if __name__ == '__main__':
    main()
