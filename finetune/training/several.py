"""The Trainer's set-up steps for several training datasets (``fit(train_data={'logs': ..., 'scored': ...})``):
each dataset with its own loss, batch sampler, collator and towers, its files and size checked under its own name
(see :mod:`finetune.data.several` for how batches are drawn)."""
from __future__ import annotations

from typing import Any

from ..data.batches import Collator, RowsDataset, text_lengths
from ..data.several import SeveralBatches, SeveralCollator, SeveralData, check_sampling
from ..data.split import hold_out
from ..errors import InputError, OptionError
from ..evaluation import check_data_files, side_models
from ..heads import ensure_cosine_classifier
from ..losses import build_loss
from ..losses.several import PerDataset
from ..prompts import training_preprocessors


def first_part(data):
    """The first dataset of several (the one whose sides stand for the run in its log lines), else `data`."""
    return data.part(0) if isinstance(data, SeveralData) else data


def hold_out_each(setup, train: SeveralData):
    """(training datasets, validation datasets or None): ``validation_split`` held out of each dataset where it
    applies (see :func:`~finetune.data.split.hold_out`); the validation data is measured dataset by dataset."""
    c = setup.config
    share, explicit = c.validation_split, 'validation_split' in c.explicit
    held_before = None if setup.resume_state is None else (setup.resume_state.get('validation_parts') or {})
    rest, validation = {}, {}
    for name, part in train.parts.items():
        if held_before is None:
            rest[name], held, said = hold_out(part, share, explicit, c.seed)
        else:  # a resumed run holds out of each dataset what its checkpoint's run did
            rest[name], held, said = hold_out(part, share if held_before.get(name) else 0, True, c.seed)
        if held is not None:
            validation[name] = held
        if said:
            setup.say(f'train_data[{name!r}]: {said}')
    setup.validation_parts = {name: len(v) for name, v in validation.items()}
    setup.validation_rows = sum(setup.validation_parts.values())
    return SeveralData(rest, train.source), (SeveralData(validation, 'validation split') if validation else None)


def check_parts(setup) -> None:
    """Every dataset's files readable by the model of its side, and a full batch in each dataset."""
    c, data = setup.config, setup.train_data
    check_sampling(c.dataset_sampling, data.names)
    for name, part in data.parts.items():
        check_data_files(setup.model, part, f'train_data[{name!r}]', c.progress)
        if c.batch_size > len(part):
            raise InputError(f'batch_size={c.batch_size} is larger than train_data[{name!r}] ({len(part)} rows): '
                             f'every batch holds rows of one dataset; use batch_size <= {len(part)}, or give that '
                             f'dataset more rows.')


def per_dataset(setting: Any, names: list[str], what: str, example: str) -> dict[str, Any]:
    """`setting` for each dataset: a dict whose keys are all dataset names gives each its own (missing ones None),
    anything else is shared. OptionError for a dict that mixes dataset names with other keys."""
    if isinstance(setting, dict) and setting:
        named = [k for k in setting if k in names]
        if len(named) == len(setting):
            return {name: setting.get(name) for name in names}
        if named:
            other = next(k for k in setting if k not in names)
            raise OptionError(f'{what}: {other!r} is not a dataset of train_data ({", ".join(map(repr, names))}), '
                              f'but {named[0]!r} is; give either one setting for all or one per dataset, such as '
                              f'{example}.')
    return {name: setting for name in names}


def build_losses(setup) -> PerDataset:
    """Each dataset's loss (named in ``loss``, a name for all or one per dataset; else the family's default for
    its kind, else the kind's), its ``loss_options`` (for all, or per dataset), one cosine classifier head at
    most. OptionError, naming the dataset, for what does not fit."""
    c, data = setup.config, setup.train_data
    names = data.names
    if isinstance(c.loss, dict):
        unknown = [k for k in c.loss if k not in names]
        if unknown:
            raise OptionError(f'loss: {unknown[0]!r} is not a dataset of train_data; its datasets are '
                              f'{", ".join(map(repr, names))}.')
    chosen = per_dataset(c.loss, names, 'loss', "{'logs': 'InfoNCE', 'scored': 'CoSENTLoss'}")
    options = per_dataset(c.loss_options, names, 'loss_options', "{'logs': {'temperature': 0.05}}")
    losses = {}
    for name, part in data.parts.items():
        kind, family = part.data_kind, side_models(setup.model, part)[0].backbone  # the tower of its first side
        loss_name = chosen[name] or family.default_losses.get(kind.name) or kind.default_loss
        num_classes = len(part.label_names) if kind.name == 'labeled' else None
        try:
            losses[name] = build_loss(loss_name, options[name], kind.name, num_classes=num_classes,
                                      embedding_dim=setup.model.output_dim)
        except OptionError as exc:
            raise OptionError(f'train_data[{name!r}]: {exc}') from None
    _check_losses(losses)
    with_head = [name for name, loss in losses.items() if getattr(loss, 'needs_classifier_head', False)]
    if with_head:
        try:
            ensure_cosine_classifier(setup.model, len(data.parts[with_head[0]].label_names), setup.say)
        except OptionError as exc:
            raise OptionError(f'train_data[{with_head[0]!r}]: {exc}') from None
    setup.say('losses: ' + ', '.join(f'{name} {loss.name}' for name, loss in losses.items()))
    return PerDataset(losses)


def _check_losses(losses: dict) -> None:
    """OptionError for what several datasets do not train with: two classifier heads, a guide, GradCache, or
    Matryoshka sizes that differ between the datasets."""
    heads = [name for name, loss in losses.items() if getattr(loss, 'needs_classifier_head', False)]
    if len(heads) > 1:
        raise OptionError(f'loss: the datasets {heads[0]!r} and {heads[1]!r} both train through a classifier '
                          f'head, and a model has one; give one of them a loss on embeddings (ArcFaceLoss, '
                          f'CosFaceLoss, or an in-batch loss).')
    for name, loss in losses.items():
        if loss.__dict__.get('guide') is not None or getattr(loss, 'mini_batch_size', None) is not None:
            option = 'guide' if loss.__dict__.get('guide') is not None else 'mini_batch_size'
            raise OptionError(f"loss_options for train_data[{name!r}]: {option!r} trains one dataset at a time; "
                              f"with several datasets leave it out, or train that dataset alone.")
    dims = {name: loss.matryoshka_dims for name, loss in losses.items()}
    if len(set(dims.values())) > 1:
        shown = '; '.join(f'{name}: {list(d) if d else None}' for name, d in dims.items())
        raise OptionError(f"loss_options 'matryoshka_dims': the datasets' losses train different sizes ({shown}); "
                          f"a model has one set of sizes: give every dataset the same matryoshka_dims.")


def batch_sampler(setup) -> SeveralBatches:
    """Each dataset's own batch sampler (texts of similar length together where its kind groups them), ordered
    by ``dataset_sampling``."""
    c, data = setup.config, setup.train_data
    samplers = []
    for name, part in data.parts.items():
        try:
            sampler = part.data_kind.batch_sampler(part, c.batch_size, c.seed, c.num_items_per_class)
        except (InputError, OptionError) as exc:
            raise type(exc)(f'train_data[{name!r}]: {exc}') from None
        lengths = text_lengths(part) if c.group_by_length is not False else None
        if lengths is not None and hasattr(sampler, 'group_by_length'):
            sampler.group_by_length(lengths)
        samplers.append(sampler)
    mode = c.dataset_sampling
    setup.say(f'batches: one dataset each, {mode if isinstance(mode, str) else f"weighted {mode}"} '
              f'({", ".join(f"{n} {len(s)}" for n, s in zip(data.names, samplers))} batches per pass)')
    return SeveralBatches(samplers, data.starts, data.names, mode, c.seed, setup.accelerator.num_processes)


def collator(setup) -> SeveralCollator:
    """Each dataset's rows collated by its kind, each side by the model that embeds it (with its prompt)."""
    parts = []
    for part in setup.train_data.parts.values():
        side_a, side_b = side_models(setup.model, part)
        parts.append(Collator(part.data_kind, *training_preprocessors(side_a, side_b), RowsDataset(part).where))
    return SeveralCollator(parts)


def tower_names(setup) -> list[dict[str, str]]:
    """For a multi-tower model: the tower that embeds each side, per dataset."""
    names = {id(m): t for t, m in setup.model.towers.items()}
    out = []
    for part in setup.train_data.parts.values():
        side_a, side_b = side_models(setup.model, part)
        out.append({'a': names[id(side_a)], **({'b': names[id(side_b)]} if side_b is not None else {})})
    return out
