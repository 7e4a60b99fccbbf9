"""PointNet++ training throughput (clouds/s, forward + backward + optimizer step) and peak memory.

Usage: python benchmarks/bench_pointnet.py [--model pointnet-base] [--batch-size 16] [--steps 5]

Prints, for fp32 and for bf16 autocast (when this CPU has native bf16 math, or on CUDA):
clouds per second at the model's num_points (2,048 for pointnet-base), the ratio of bf16 to fp32 measured
in the same run, the share of a step spent in farthest-point sampling and ball query, and the peak
resident memory of the process (CPU) or peak allocated GPU memory. Random clouds are used: the speed of
the network does not depend on the shapes.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

import finetune
from finetune.training import cpu_supports_bf16
from finetune_pointnet import network


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run(model, batch: torch.Tensor, steps: int, dtype: torch.dtype | None, device: str) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step():
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            emb = model(batch)
            loss = (emb[: len(emb) // 2] * emb[len(emb) // 2:]).sum(-1).mean()  # any scalar of the output
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: allocator, kernels
    if device == 'cuda':
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device == 'cuda':
        torch.cuda.synchronize()
    return steps * len(batch) / (time.perf_counter() - started)


def sampling_share(model, batch: torch.Tensor) -> float:
    """Fraction of one (warm) forward pass spent in farthest-point sampling and ball query."""
    spent = [0.0]
    originals = network.farthest_point_sample, network.ball_query
    sync = torch.cuda.synchronize if batch.is_cuda else (lambda: None)

    def timed(fn):
        def wrapper(*args, **kwargs):
            sync()
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            sync()
            spent[0] += time.perf_counter() - t
            return out
        return wrapper
    with torch.no_grad():
        model(batch)  # warm-up
    network.farthest_point_sample, network.ball_query = timed(originals[0]), timed(originals[1])
    try:
        with torch.no_grad():
            sync()
            started = time.perf_counter()
            model(batch)
            sync()
            total = time.perf_counter() - started
    finally:
        network.farthest_point_sample, network.ball_query = originals
    return spent[0] / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='pointnet-base')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()

    torch.manual_seed(0)
    model = finetune.build_model(args.model).to(args.device)
    points = model.backbone.preprocessor.num_points
    batch = (torch.rand(args.batch_size, points, 3, device=args.device) * 2 - 1)
    print(f'{args.model}: {points} points per cloud, batch {args.batch_size}, {args.steps} timed steps, '
          f'{torch.get_num_threads()} threads, device {args.device}')
    share = sampling_share(model, batch)
    print(f'  farthest-point sampling + ball query: {share:.0%} of a forward pass')
    if args.device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    fp32 = run(model, batch, args.steps, None, args.device)
    memory = (torch.cuda.max_memory_allocated() / 2 ** 20 if args.device == 'cuda' else peak_rss_mib())
    print(f'  fp32: {fp32:.1f} clouds/s (forward + backward + step), peak memory {memory:,.0f} MiB '
          f'({"GPU allocated" if args.device == "cuda" else "process RSS"})')
    if args.device == 'cuda' or cpu_supports_bf16():
        bf16 = run(model, batch, args.steps, torch.bfloat16, args.device)
        print(f'  bf16 autocast: {bf16:.1f} clouds/s = {bf16 / fp32:.2f}x fp32 (same run)')
    else:
        print('  bf16 autocast: skipped, this CPU has no native bf16 math')


if __name__ == '__main__':
    main()
