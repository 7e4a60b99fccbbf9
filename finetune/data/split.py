"""A validation share held out of the training rows (``fit(validation_split=...)``): rows that choose the model
handed back when the caller gives no eval data, and that the model never trains on.

Rows of one group go to the same side: the positives of one query (pairs, margin triplets), so that no query is
both trained on and measured. Labeled data is split within each class instead (a class keeps training rows, and
its held-out items are queries with relevant documents among themselves): see :func:`rows_within_classes`.
The choice is a function of the seed alone, so a resumed run holds out the same rows.
"""
from __future__ import annotations

import random
from typing import Sequence

from .training_data import TrainingData

#: fewer held-out rows than this measure too noisily to choose a model by (the default split is skipped)
LEAST_VALIDATION_ROWS = 100


def rows_by_group(groups: Sequence[int] | None, count: int, share: float, seed: int) -> list[int]:
    """About ``share * count`` row indices, whole groups at a time (rows without groups: rows one at a time),
    drawn with `seed`; sorted."""
    members: dict[int, list[int]] = {}
    for row, group in enumerate(groups if groups is not None else range(count)):
        members.setdefault(group, []).append(row)
    order = list(members)
    random.Random(seed).shuffle(order)
    wanted, chosen = round(share * count), []
    for group in order:
        if len(chosen) >= wanted:
            break
        chosen.extend(members[group])
    return sorted(chosen)


def rows_within_classes(groups: Sequence[int], share: float, seed: int) -> list[int]:
    """``round(share * n)`` items of each class of n items, where that is at least 2 (one held-out item alone
    has no relevant document to find); drawn with `seed`; sorted."""
    members: dict[int, list[int]] = {}
    for row, group in enumerate(groups):
        members.setdefault(group, []).append(row)
    rng, chosen = random.Random(seed), []
    for group in sorted(members):
        rows = members[group]
        take = round(share * len(rows))
        if take >= 2:
            chosen.extend(rng.sample(rows, take))
    return sorted(chosen)


def split_off(data: TrainingData, rows: Sequence[int]) -> tuple[TrainingData, TrainingData]:
    """(`data` without `rows`, the `rows` as validation data named 'validation split')."""
    held = set(rows)
    kept = [i for i in range(len(data)) if i not in held]
    return data.subset(kept), data.subset(list(rows), 'validation split')


def hold_out(train: TrainingData, share: float, explicit: bool, seed: int) -> tuple[TrainingData,
                                                                                     TrainingData | None, str]:
    """`train` split into (training rows, validation rows or None) by ``validation_split=share``, and the line
    that says what was done. The default share is applied only where it holds out at least
    :data:`LEAST_VALIDATION_ROWS` rows; a share the caller passed on purpose is applied whenever it holds out any
    measurable rows."""
    if share == 0:
        return train, None, ''
    rows = train.data_kind.validation_rows(train, share, seed)
    enough = len(rows) >= (1 if explicit else LEAST_VALIDATION_ROWS) and len(train) - len(rows) >= 2
    if enough:
        rest, validation = split_off(train, rows)
        try:
            validation.data_kind.check_measurable(validation)
        except Exception:  # noqa: BLE001 - too uniform to rank by: not a validation set
            enough = False
    if not enough:
        return train, None, (
            f'no validation split: validation_split={share:g} of {len(train):,} training rows holds out '
            f'{len(rows):,} measurable rows, fewer than {LEAST_VALIDATION_ROWS}; the model handed back is the last '
            f'one, not checked against the base. Pass eval_data (or a larger validation_split) to choose it.')
    return rest, validation, (
        f'validation split: {len(validation):,} of the {len(train):,} training rows held out (validation_split='
        f'{share:g}) to choose the model handed back; it trains on the other {len(rest):,}. Pass eval_data to choose '
        f'on data of your own, validation_split=0 to train on every row.')
