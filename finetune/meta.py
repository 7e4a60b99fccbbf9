"""Build modules without allocating their weights, to learn shapes and output sizes cheaply."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Inside this block every parameter and buffer a module registers is moved to the meta device.

    Unlike ``with torch.device('meta')`` this leaves plain tensor arithmetic in constructors alone
    (torchvision's RegNet computes its widths with tensors), so every model builds.
    """
    original_param = nn.Module.register_parameter
    original_buffer = nn.Module.register_buffer

    def register_parameter(module, name, param):
        original_param(module, name, param)
        if param is not None:
            p = module._parameters[name]
            module._parameters[name] = nn.Parameter(p.to('meta'), requires_grad=p.requires_grad)

    def register_buffer(module, name, tensor, persistent=True):
        original_buffer(module, name, tensor, persistent)
        if tensor is not None:
            module._buffers[name] = module._buffers[name].to('meta')

    nn.Module.register_parameter = register_parameter
    nn.Module.register_buffer = register_buffer
    try:
        yield
    finally:
        nn.Module.register_parameter = original_param
        nn.Module.register_buffer = original_buffer


def meta_output_shape(module: nn.Module, *inputs: torch.Tensor) -> tuple[int, ...]:
    """Shape of ``module(*inputs)`` computed on the meta device (no real compute)."""
    with torch.no_grad():
        out = module(*(x.to('meta') for x in inputs))
    return tuple(out.shape)
