"""Encode throughput and retrieval quality of all-MiniLM-L6-v2 as torch fp32, ONNX fp32, ONNX int8 and, where it
is installed, sentence-transformers' own ONNX backend: the same texts, in the same process, on this CPU. int8 is
also exported without its smoothing step (the fallback alone, as before smoothing) for comparison, and with each
fallback target of `--int8-min-cosine` (a user's choice: `finetune.export(..., int8_min_cosine=...)`).

    python benchmarks/bench_export.py [--texts-data examples/data/wordnet_train.csv] [--texts 3000]
                                      [--eval-data examples/data/wordnet_eval.csv] [--batch-size 64]
                                      [--threads N] [--rounds 5] [--int8-min-cosine 0.995 ...]

The exports go through `finetune.export` with the held-out pairs as eval data, so each passed the parity gate
(cosine and metrics) on them. Speed is then measured the same way for every runtime: the same texts (the first
`--texts` distinct texts of `--texts-data`, each pair's query then its document), the same batch size, the same
number of CPU threads (torch's intra-op threads and each onnxruntime session's, set explicitly), models loaded
before any timing, one untimed warm-up pass over all the texts each (every sequence length, thread pools,
allocators), then `--rounds` timed passes with the runtimes interleaved (the order rotates each round) so that load
from other jobs on the machine hits all of them alike. Reported: the median texts/s of each, its range, and its
ratio to torch: the ratio of the medians and the range of the per-round ratios. `finetune.evaluate` gives each its
retrieval metrics on the eval pairs (not timed).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, '..', 'examples', 'data')
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


def cpu_description() -> str:
    """The CPU's model name and how many logical CPUs this process may use (and the machine has)."""
    name = None
    try:
        with open('/proc/cpuinfo') as f:
            name = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), None)
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return f'{name} ({platform.machine()}), {usable} cores usable by this process, {os.cpu_count()} on the machine'


def _set_onnx_threads(model, threads: int) -> None:
    """Give the ONNX model a CPU session on the same graph with exactly `threads` intra-op threads (one graph run
    at a time), as torch gets: onnxruntime's own default is the number of physical cores."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    model.session = ort.InferenceSession(model.graph_path, options, providers=['CPUExecutionProvider'])


@contextlib.contextmanager
def _smoothing(on: bool):
    """int8 exports inside quantize as finetune does (`on`), or without the smoothing step: the fallback alone,
    as before smoothing was added (for the comparison in the same run)."""
    from finetune.exporting import quantization
    original = quantization.quantize_int8
    if not on:
        quantization.quantize_int8 = lambda *a, **k: original(*a, **{**k, 'smoothing': None})
    try:
        yield
    finally:
        quantization.quantize_int8 = original


def _timed_pass(model, texts: list[str], batch_size: int) -> float:
    """texts/s of one full encode of `texts`."""
    gc.collect()
    start = time.perf_counter()
    model.encode(texts, batch_size=batch_size)
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--texts-data', default=os.path.join(DATA, 'wordnet_train.csv'),
                        help='pairs whose distinct texts are encoded for speed')
    parser.add_argument('--texts', type=int, default=3000, help='how many distinct texts to encode per pass')
    parser.add_argument('--eval-data', default=os.path.join(DATA, 'wordnet_eval.csv'),
                        help='held-out pairs: the parity gate of the exports and every runtime\'s metrics')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--threads', type=int, default=None,
                        help='CPU threads of every runtime (default: the cores usable by this process)')
    parser.add_argument('--rounds', type=int, default=5, help='timed passes per runtime (median reported)')
    parser.add_argument('--no-unsmoothed', dest='unsmoothed', action='store_false',
                        help='skip the int8 export without smoothing (the fallback alone)')
    parser.add_argument('--int8-min-cosine', type=float, nargs='*', default=[0.995],
                        help='also export int8 with these fallback targets (default 0.995; none: only 0.997)')
    args = parser.parse_args()

    import onnxruntime
    import torch
    import transformers

    import finetune
    from finetune.data import load_data
    from finetune_transformers.specs import packaged_minilm

    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count())
    torch.set_num_threads(threads)
    pairs = load_data(args.texts_data, 'texts_data')
    texts = list(dict.fromkeys(text for pair in zip(pairs.a, pairs.b) for text in pair))[:args.texts]
    print(f'CPU: {cpu_description()}')
    print(f'torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, transformers {transformers.__version__}; '
          f'{threads} threads for every runtime (torch intra-op threads {torch.get_num_threads()}); batch size '
          f'{args.batch_size}; {len(texts)} distinct texts from {args.texts_data}; {args.rounds} rounds')
    print(f'load average at start: {" ".join(f"{x:.2f}" for x in os.getloadavg())}')

    with tempfile.TemporaryDirectory() as tmp:
        artifact = os.path.join(tmp, 'minilm')
        finetune.save_model(finetune.build_model('all-minilm-l6-v2'), artifact)
        models = {'torch fp32': finetune.load(artifact)}
        lengths = torch.cat([models['torch fp32'].preprocess(texts[i:i + 256])['attention_mask'].sum(1)
                             for i in range(0, len(texts), 256)]).float()
        print(f'tokens per text: mean {lengths.mean():.1f}, max {int(lengths.max())}')
        runs = [('ONNX fp32', None, True, None), ('ONNX int8', 'int8', True, None)]
        runs += [(f'ONNX int8, int8_min_cosine={target}', 'int8', True, target) for target in args.int8_min_cosine]
        if args.unsmoothed:
            runs.append(('ONNX int8 without smoothing', 'int8', False, None))
        for name, quantize, smoothing, target in runs:
            start = time.perf_counter()
            try:
                with _smoothing(smoothing):
                    folder = finetune.export(artifact, quantize=quantize, eval_data=args.eval_data, log=print,
                                             output=os.path.join(tmp, f'export-{len(models)}'),
                                             int8_min_cosine=target)
            except finetune.ExportError as exc:  # the gate refused it: its figures are the result
                print(f'{name}: refused by the parity gate, not measured: {exc}')
                continue
            print(f'  export took {time.perf_counter() - start:.1f} s')
            models[name] = onnx_model = finetune.load(folder)
            _set_onnx_threads(onnx_model, threads)
        st, why = _st_onnx(packaged_minilm())
        if st is None:
            print(f"sentence-transformers' ONNX backend: not run here ({why})")
        else:  # its session is made by sentence-transformers: onnxruntime's default thread count
            models['sentence-transformers ONNX (ort default threads)'] = st

        for name, model in models.items():  # untimed: every sequence length once, thread pools, allocators
            model.encode(texts, batch_size=args.batch_size)
        speeds: dict[str, list[float]] = {name: [] for name in models}
        names = list(models)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                speeds[name].append(_timed_pass(models[name], texts, args.batch_size))
            print(f'round {r + 1}: ' + ', '.join(f'{n} {speeds[n][-1]:.0f}' for n in names) + ' texts/s', flush=True)
        print(f'load average at end: {" ".join(f"{x:.2f}" for x in os.getloadavg())}')
        metrics = {name: finetune.evaluate(model, args.eval_data, batch_size=args.batch_size)
                   for name, model in models.items()}

    base = statistics.median(speeds['torch fp32'])
    print(f"\n| runtime | texts/s (median) | range | vs torch (medians) | vs torch (per round) | "
          f"{' | '.join(METRICS)} |\n|---|---|---|---|---|" + '---|' * len(METRICS))
    for name in names:
        ratios = [s / t for s, t in zip(speeds[name], speeds['torch fp32'])]
        print(f'| {name} | {statistics.median(speeds[name]):.0f} | {min(speeds[name]):.0f}-{max(speeds[name]):.0f} | '
              f'{statistics.median(speeds[name]) / base:.2f}x | {min(ratios):.2f}-{max(ratios):.2f}x | '
              + ' | '.join(f'{metrics[name][m]:.4f}' for m in METRICS) + ' |')


if __name__ == '__main__':
    main()
