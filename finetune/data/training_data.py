"""The one shape all data takes once read: :class:`TrainingData`, rows of one kind with their groups, scores and
the place each row came from.

Readers (:mod:`finetune.data.readers`) and kinds (:mod:`finetune.data.kinds`) build it; it looks its kind object up
by name (:mod:`finetune.data.kind_registry`) and imports neither.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..modalities import item_modality
from .kind_registry import lookup_kind


@dataclass
class TrainingData:
    """Data of one registered kind. ``a`` holds items / queries / texts, ``b`` docs / images / second
    sentences; ``groups`` the label id of each row (class for labeled data, query group for pairs);
    ``scores`` the score of each scored pair; ``label_names[g]`` the original label of group ``g``."""

    kind: str
    a: list
    b: list | None = None
    groups: list[int] | None = None
    scores: list[float] | None = None
    label_names: list = field(default_factory=list)
    source: str = 'data'
    #: the file line of each row, for data read from a file (None: rows are counted from 0)
    lines: list[int] | None = None
    #: further columns of kinds that have them (name -> one value per row)
    extra: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.a)

    def where(self, index: int) -> str:
        """Where row `index` came from, for messages: 'train.csv, line 12' or 'train_data, row 11'."""
        if self.lines is not None and 0 <= index < len(self.lines):
            return f'{self.source}, line {self.lines[index]}'
        return f'{self.source}, row {index}'

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modality of each side, read off the first row."""
        sides = [self.a] + ([self.b] if self.b is not None else [])
        return tuple(item_modality(side[0]) for side in sides)

    @property
    def data_kind(self):
        """The :class:`~finetune.data.kinds.DataKind` object of :attr:`kind`; InputError for an unknown kind."""
        return lookup_kind(self.kind)

    def describe(self) -> str:
        """One line: what this data is, as detected."""
        return self.data_kind.describe(self)

    def subset(self, rows: Sequence[int], source: str | None = None) -> TrainingData:
        """The data of `rows` (indices, in that order), named `source` (default: this data's name). Group ids and
        label names stay as they are (a class keeps its id, so a classifier head counts the same classes)."""
        def pick(column):
            return None if column is None else [column[i] for i in rows]
        return TrainingData(self.kind, pick(self.a), pick(self.b), pick(self.groups), pick(self.scores),
                            list(self.label_names), source or self.source, pick(self.lines),
                            {name: pick(column) if len(column) == len(self.a) else column
                             for name, column in self.extra.items()})


def hashable_key(value: Any) -> Any:
    """`value` itself where it is hashable, else its id: a key to count distinct cells by (items such as image
    arrays; class labels are hashable, unhashable ones are refused where labels are read)."""
    try:
        hash(value)
        return value
    except TypeError:
        return id(value)


def group_ids(values: Sequence[Any]) -> tuple[list[int], list]:
    """The group id of each value (equal values share one, numbered in order of first appearance) and the
    distinct values, in that order."""
    names: dict[Any, int] = {}
    ids = [names.setdefault(hashable_key(v), len(names)) for v in values]
    return ids, list(names)
