"""Build modules without allocating their weights, to learn shapes and output sizes cheaply."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, TypeVar

import torch
from torch import nn

T = TypeVar('T')


def build_on_meta(factory: Callable[[], T]) -> T:
    """``factory()`` with every parameter and buffer on the meta device: shapes without memory.

    Tries ``with torch.device('meta')`` (nothing is ever allocated); a constructor that computes with
    tensors (torchvision's RegNet reads its widths back with ``.tolist()``) is built again under
    :func:`empty_weights`, which allocates one tensor at a time and moves it to meta at once.
    """
    try:
        with torch.device('meta'):
            return factory()
    except (NotImplementedError, RuntimeError):
        with empty_weights():
            return factory()


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

