"""The contract between a model family (a plugin) and the core.

A plugin's builder returns a :class:`Backbone`: a module that turns a batch into *unpooled* features
with their layout (image maps ``(N, C, H, W)`` or token sequences ``(N, L, C)`` with a mask), knows its
model's own pooling, and preprocesses raw items (paths, PIL images, arrays, strings) into a batch.
The core puts a pooler, an optional head and L2 normalization on top; it never looks inside.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .poolers import MAP, TOKENS  # noqa: F401  (re-exported for plugins)

#: in training, a batch with row lengths is embedded in up to LENGTH_GROUPS groups of rows of similar length
#: (:func:`length_cuts`); each group beyond the first must save LENGTH_SPLIT_SAVING of the token positions left,
#: and each holds LENGTH_SPLIT_ROWS rows or more
LENGTH_GROUPS = 3
LENGTH_SPLIT_SAVING = 0.15
LENGTH_SPLIT_ROWS = 4


@dataclass
class Features:
    """Unpooled features: ``tensor`` is ``(N, C, H, W)`` (layout 'map') or ``(N, L, C)`` ('tokens');
    ``mask`` is ``(N, L)`` with 1 for real tokens, or None when every position is real."""

    tensor: torch.Tensor
    mask: torch.Tensor | None = None


class Backbone(nn.Module):
    """Base class of every backbone a plugin builds.

    Subclasses set :attr:`modality`, :attr:`layout`, :attr:`own_dim` (the embedding size with the
    model's own pooling) and :attr:`pooled_dim` (the size after one of our poolers plus
    :meth:`after_pooler`), and implement :meth:`forward`, :meth:`pool_own` and :meth:`preprocess`.
    """

    modality: str = 'image'
    #: 'map', 'tokens', or None for a backbone that exposes no unpooled features (own pooling only)
    layout: str | None = MAP
    own_dim: int = 0
    pooled_dim: int = 0
    #: a prefix that ``freeze`` prefixes may leave out (a wrapped model's attribute name, e.g. 'model.')
    param_prefix: str = ''
    #: the loss ``fit`` uses for a data kind when none is named, where this family needs another than the
    #: core's default (e.g. ``{'labeled': 'NormalizedSoftmaxLoss'}`` for a model trained from scratch)
    default_losses: dict[str, str] = {}
    #: True when ``precision='auto'`` should train this family in fp32 even where bf16 autocast is available
    #: (measured to cost it accuracy without saving time)
    prefers_fp32: bool = False
    #: the learning rate ``fit`` uses when none is given (None: the core's 1e-4)
    default_learning_rate: float | None = None
    #: environment variables ``fit`` sets (unless set) before its DataLoader workers fork, for this family's
    #: preprocessing (a tokenizer library whose threads do not survive a fork, say)
    worker_environment: dict[str, str] = {}
    #: the distributions whose versions a saved model records, besides finetune and torch
    packages: tuple[str, ...] = ()
    #: regular expressions over the node names of an exported graph: nodes that int8 quantization leaves in fp32
    #: (layers whose activations have outliers that per-tensor run-time quantization cannot hold)
    int8_fp32_nodes: tuple[str, ...] = ()
    #: the modules LoRA adapters wrap when ``model_options={'lora': True}`` names none: the last component of
    #: their names (e.g. ``('query', 'key', 'value', 'dense')``), usually the attention and MLP projections;
    #: empty where the family has no default (``lora`` then needs ``target_modules``)
    lora_targets: tuple[str, ...] = ()

    #: True for a family whose items are texts that named prompts may precede (``model_options`` prompts, see
    #: :mod:`finetune.prompts`); such a family lists :func:`finetune.prompts.prompt_options` among its options
    takes_prompts: bool = False

    def exclude_prompt(self, batch: Any, prompt: str) -> Any:
        """`batch` (of texts that each begin with `prompt`) marked so that the pooling leaves the prompt's tokens
        out (``include_prompt=False``); the family of a backbone that :attr:`takes_prompts` implements it."""
        from .errors import OptionError
        raise OptionError(f"option 'include_prompt': the {type(self).__name__} family cannot leave a prompt out of "
                          f'its pooling; leave include_prompt True.')

    def lora_target_modules(self) -> tuple[str, ...]:
        """The default LoRA targets of this backbone (:attr:`lora_targets`); a family whose models differ
        (encoders and decoders, say) may look at its model here."""
        return tuple(self.lora_targets)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass instead of keeping them (``model_options=
        {'gradient_checkpointing': True}``): less memory, about a third more compute, the same gradients. Raises
        OptionError where the family cannot (the default)."""
        from .errors import OptionError
        raise OptionError(f"option 'gradient_checkpointing': the {type(self).__name__} family does not support "
                          f'it; leave it False.')

    def forward(self, batch: Any) -> Features:  # pragma: no cover - abstract
        raise NotImplementedError

    def pool_own(self, features: Features) -> torch.Tensor:  # pragma: no cover - abstract
        """The model's own pooling (and any layers up to its removed classifier): ``(N, own_dim)``."""
        raise NotImplementedError

    def after_pooler(self, pooled: torch.Tensor) -> torch.Tensor:
        """Layers kept after a replaced pooler (e.g. MobileNetV3's pre-classifier Linear)."""
        return pooled

    def preprocess(self, items: Sequence[Any]) -> Any:  # pragma: no cover - abstract
        """Turn raw items into a batch that :meth:`forward` accepts."""
        raise NotImplementedError

    def preprocess_train(self, items: Sequence[Any]) -> Any:
        """Raw items -> a training batch: :meth:`preprocess` plus any random augmentation the family does
        in training (``fit`` calls this in its DataLoader workers). Default: :meth:`preprocess`."""
        return self.preprocess(items)

    def augments_in_training(self) -> bool:
        """True when :meth:`preprocess_train` may give one item a different view on every call (random
        augmentation, freshly sampled points), so that its features cannot be computed once and reused (see
        :mod:`finetune.training.features`). Default: whether the family overrides :meth:`preprocess_train`;
        a family whose override is deterministic, or whose augmentation an option turned off, may say False."""
        return type(self).preprocess_train is not Backbone.preprocess_train

    def check_batch(self, batch: Any) -> None:
        """Raise :class:`~finetune.errors.InputError` for a batch this backbone cannot take."""

    def slice_batch(self, batch: Any, start: int, stop: int) -> Any:
        """Rows ``start:stop`` of a batch of this backbone (GradCache embeds a batch in such chunks). Default:
        every tensor cut along its first dimension; a family with padded sequences may also drop the columns
        that are padding in every row of the chunk."""
        return slice_batch(batch, start, stop)

    def row_lengths(self, batch: Any) -> torch.Tensor | None:
        """The length of each row of a batch of padded sequences, or None (the default) where rows have no
        length, or where rows interact (batch statistics) and must stay together in the batch's order. With
        lengths, training embeds a batch in :meth:`length_groups` and GradCache chunks the rows in length
        order, each group or chunk cut to its own length by :meth:`slice_batch`."""
        return None

    def length_groups(self, batch: Any) -> list[tuple[torch.Tensor, Any]] | None:
        """In training, the batch as groups of rows of similar length (up to :data:`LENGTH_GROUPS`; see
        :func:`length_cuts`), each cut to its own longest row: ``[(row indices, that group's batch), ...]``;
        None to embed the batch whole (no :meth:`row_lengths`, or too little to save). The rows never interact,
        so the groups' embeddings, put back in row order, are those of the whole batch."""
        lengths = self.row_lengths(batch)
        if lengths is None:
            return None
        rows = len(lengths)
        order = torch.argsort(lengths, stable=True)
        cuts = length_cuts(lengths[order])
        if not cuts:
            return None
        bounds = [0, *cuts, rows]
        return [(order[a:b], self.slice_batch(take_rows(batch, order[a:b], rows), 0, b - a))
                for a, b in zip(bounds, bounds[1:])]

    def join_batches(self, batches: Sequence[Any]) -> Any | None:
        """The rows of several batches of this backbone as one batch, in order (padded sequences padded again
        to the longest), or None (the default) where the family cannot join them. Training embeds the sides
        of a step that this backbone embeds (queries and documents) as one joined batch, in
        :meth:`length_groups`: fewer, larger passes. Only for families whose rows never interact (as for
        :meth:`row_lengths`); for such a family, the sides' cached features (a frozen backbone's) are joined
        too (:func:`join_features`)."""
        return None

    def joins_batches(self) -> bool:
        """Whether this family joins batches (overrides :meth:`join_batches`)."""
        return type(self).join_batches is not Backbone.join_batches

    def check_file(self, path: str) -> str | None:
        """Why the file at `path` cannot be one of this backbone's items (``'does not exist'``, ...), or None.

        ``fit`` calls this for every file of the data before training, on threads: keep it to a stat and a
        header read. Default: the file exists and can be read; for image backbones, its header decodes."""
        from .preprocessing import file_problem, image_file_problem
        problem = file_problem(path)
        if problem is None and self.modality == 'image':
            problem = image_file_problem(path)
        return problem

    # ------------------------------------------------------------------ export (ONNX and other graph formats)
    def export_inputs(self, batch: Any) -> dict[str, torch.Tensor]:
        """The named inputs of an exported graph, in the order the graph takes them, for a batch that
        :meth:`preprocess` made. Default: a tensor batch is one input called ``'input'``; a mapping batch gives
        its tensors under their keys. A family whose batch holds more (or other) things overrides this and
        :meth:`batch_from_inputs`."""
        if isinstance(batch, torch.Tensor):
            return {'input': batch}
        if isinstance(batch, Mapping):
            return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        from .errors import ExportError
        raise ExportError(f'{type(self).__name__}: a batch of type {type(batch).__name__} has no default graph '
                          f'inputs; the family must define export_inputs and batch_from_inputs.')

    def batch_from_inputs(self, inputs: Mapping[str, torch.Tensor]) -> Any:
        """The batch :meth:`forward` takes, from the graph inputs :meth:`export_inputs` named (its inverse)."""
        if list(inputs) == ['input']:
            return inputs['input']
        return dict(inputs)

    def export_dynamic_axes(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, dict[int, str]]:
        """The axes of each graph input whose size varies from call to call, named. Default: axis 0 (the batch)
        of every input, and axis 1 (the sequence) of the 2-D inputs of a mapping batch (ids and their mask)."""
        many = list(inputs) != ['input']
        return {name: ({0: 'batch', 1: 'sequence'} if many and t.dim() == 2 else {0: 'batch'})
                for name, t in inputs.items()}

    def layer_groups(self) -> list[str]:
        """Parameter-name prefixes of the network's layers, input to output, for
        ``freeze={'except_last_layers': N}``.

        Default: the direct children that hold parameters; while that makes fewer than
        :data:`MIN_LAYER_GROUPS` groups, the group with the most parameters that has several such children
        is replaced, in place, by its children (a wrapped timm model, torchvision's single ``features``
        stack, a ViT's ``encoder.layers`` become their stages or blocks)."""
        groups: list[tuple[str, nn.Module]] = [(n, c) for n, c in self.named_children() if _holds_params(c)]
        while len(groups) < MIN_LAYER_GROUPS:
            splittable = [(sum(p.numel() for p in child.parameters()), i) for i, (_, child) in enumerate(groups)
                          if sum(1 for c in child.children() if _holds_params(c)) >= 2]
            if not splittable:
                break
            i = max(splittable)[1]
            name, child = groups[i]
            groups[i:i + 1] = [(f'{name}.{n}', c) for n, c in child.named_children() if _holds_params(c)]
        return [name for name, _ in groups]

    def depth_layers(self) -> list[tuple[str, ...]]:
        """The parameters by depth, input to output, for ``unlocked_layers`` and ``layer_decay`` (see
        :mod:`finetune.layers`): each entry the parameter-name prefixes (or full names) of one layer. A family
        with transformer blocks lists ``[stem, block 1, ..., block L]``, the final norm and projection joined to
        the last block (:func:`finetune.layers.block_layers`). Default: each of :meth:`layer_groups` alone."""
        return [(group,) for group in self.layer_groups()]


#: the fewest layer groups the default :meth:`Backbone.layer_groups` settles for before splitting one
MIN_LAYER_GROUPS = 4


def _holds_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


@dataclass
class Towers:
    """What a multi-tower family (CLIP) builds: one backbone per modality, embedding into one space.

    ``logit_scale`` is the model's learned temperature (log of the logit scale), when it has one.
    """

    backbones: dict[str, Backbone]
    logit_scale: float | None = None


def length_cuts(ordered: torch.Tensor) -> list[int]:
    """Where to cut rows sorted by length (`ordered`, ascending) into groups, each padded to its own longest
    row: the positions of the cuts, none for one group. Of the best ways to cut into 1 to
    :data:`LENGTH_GROUPS` groups, the one with the fewest token positions, where each group beyond the first
    must save :data:`LENGTH_SPLIT_SAVING` of them; groups hold :data:`LENGTH_SPLIT_ROWS` rows or more, and
    cuts fall between rows of different lengths."""
    rows, least = len(ordered), LENGTH_SPLIT_ROWS
    if rows < 2 * least:
        return []
    ordered = ordered.cpu()  # a batch's lengths on an accelerator: a few numbers, searched here
    lengths = ordered.double()
    cut = torch.arange(least, rows - least + 1)
    cut = cut[ordered[cut - 1] < ordered[cut]]
    if not len(cut):
        return []
    ends = torch.cat([cut, torch.tensor([rows])])  # where a group may end; a group [start, end) pads to end - 1
    starts = torch.cat([torch.tensor([0]), cut])
    size = ends[None, :] - starts[:, None]  # rows of the group from starts[i] to ends[j]
    group = torch.where(size >= least, size * lengths[ends - 1][None, :], torch.tensor(math.inf, dtype=torch.float64))
    best = group[0].clone()  # the cheapest way to cover rows [0, ends[j]) with g groups
    choices = [(float(best[-1]), [])]
    back: list[torch.Tensor] = []
    for _ in range(LENGTH_GROUPS - 1):
        # a further group from ends[i] (= starts[i + 1]) to ends[j]
        total = best[:-1, None] + group[1:, :]
        best, arg = total.min(0)
        back.append(arg)
        if not math.isfinite(float(best[-1])):
            break
        where, at = [], len(ends) - 1
        for arg_g in reversed(back):
            at = int(arg_g[at])
            where.append(int(ends[at]))
        choices.append((float(best[-1]), sorted(where)))
    return min(choices, key=lambda choice: choice[0] / (1 - LENGTH_SPLIT_SAVING) ** len(choice[1]))[1]


def take_rows(x: Any, index: torch.Tensor, rows: int) -> Any:
    """The rows `index` of a model input of `rows` rows: every tensor whose first dimension is `rows` (in a dict
    / list / tuple too) indexed along it; anything else passed as it is."""
    if isinstance(x, torch.Tensor):
        return x.index_select(0, batch_to(index, x.device)) if x.dim() > 0 and x.shape[0] == rows else x
    if isinstance(x, dict):
        return {k: take_rows(v, index, rows) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(take_rows(v, index, rows) for v in x)
    return x


def inverse_order(order: torch.Tensor) -> torch.Tensor:
    """The permutation that puts rows taken in `order` (:func:`take_rows`) back where they were."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return inverse


def slice_batch(x: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a model input: a tensor, or a dict / list / tuple of them (token ids and masks,
    images, point clouds); what is not a tensor with rows is passed as it is."""
    if isinstance(x, torch.Tensor):
        return x[start:stop] if x.dim() > 0 else x
    if isinstance(x, Features):  # a frozen backbone's cached output
        return Features(x.tensor[start:stop], None if x.mask is None else x.mask[start:stop])
    if isinstance(x, dict):
        return {k: slice_batch(v, start, stop) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(slice_batch(v, start, stop) for v in x)
    return x


def join_features(parts: Sequence[Features]) -> Features | None:
    """Cached backbone outputs as one batch, in order: token sequences padded with zeros (mask 0) on the right
    to the longest, as the feature cache pads them; None where they cannot be stacked."""
    tensors = [p.tensor for p in parts]
    if any(t.dim() != tensors[0].dim() or t.shape[2:] != tensors[0].shape[2:] for t in tensors):
        return None
    masked = [p.mask is not None for p in parts]
    if not any(masked):
        if any(t.shape[1:] != tensors[0].shape[1:] for t in tensors):
            return None
        return Features(torch.cat(tensors))
    if not all(masked) or tensors[0].dim() != 3:
        return None
    length = max(t.shape[1] for t in tensors)
    pad = torch.nn.functional.pad
    return Features(torch.cat([pad(t, (0, 0, 0, length - t.shape[1])) for t in tensors]),
                    torch.cat([pad(p.mask, (0, length - p.mask.shape[1])) for p in parts]))


def rows_of(x: Any) -> int:
    """How many rows a model input holds (the first dimension of its first tensor)."""
    if isinstance(x, torch.Tensor):
        return int(x.shape[0]) if x.dim() else 0
    if isinstance(x, Features):
        return int(x.tensor.shape[0])
    values = x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple)) else ()
    for value in values:
        n = rows_of(value)
        if n:
            return n
    return 0


def batch_to(batch: Any, device: torch.device | str) -> Any:
    """Move a tensor, or the tensors inside a dict / list / tuple, to `device`. A host tensor bound for a CUDA
    device is pinned first (unless it is), so that the copy never makes the host wait for the device."""
    if isinstance(batch, torch.Tensor):
        if batch.device.type == 'cpu' and torch.device(device).type == 'cuda' and not batch.is_pinned():
            batch = batch.pin_memory()
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Features):
        return Features(batch_to(batch.tensor, device), batch_to(batch.mask, device))
    if isinstance(batch, dict):
        return {k: batch_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(batch_to(v, device) for v in batch)
    return batch
