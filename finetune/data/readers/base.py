"""What every reader is: a :class:`Reader` says whether it takes a source and reads it into a :class:`Table`,
rows of cells with what is known of them (a header, the file line of each row, a kind the source fixes); the
table is then built into :class:`~finetune.data.training_data.TrainingData` by :func:`~finetune.data.build.from_rows`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..build import from_rows
from ..training_data import TrainingData


@dataclass
class Table:
    """Rows read from a source, not yet checked. ``source`` names it in messages; ``lines`` is the file line of
    each row, or an int that turns a row index into one (0: rows are counted from 0); ``kind`` a kind the source
    itself fixes (a folder of class folders is labeled data), which wins over the one asked for."""

    rows: list
    source: str
    header: Sequence[str] | None = None
    lines: int | Sequence[int] = 0
    kind: str | None = None

    def to_data(self, kind: str | None = None) -> TrainingData:
        """The rows as TrainingData of `kind` (detected when None). Raises InputError naming the row at fault."""
        return from_rows(self.rows, source=self.source, header=self.header, kind=self.kind or kind,
                         line_offset=self.lines)


class Reader:
    """Base class of a reader of one format; subclasses set :attr:`name` and override both methods.

    :func:`~finetune.data.loading.load_data` asks the registered readers (:mod:`finetune.data.readers`) in order
    and reads a source with the first that accepts it, so a new format is one subclass passed to
    :func:`~finetune.data.readers.register_reader`.
    """

    #: the reader's name in the registry
    name: str = ''

    def accepts(self, source: Any) -> bool:
        """Whether `source` is of this reader's format (cheap: no file is read)."""
        raise NotImplementedError

    def read(self, source: Any, name: str, delimiter: str = ',') -> Table:
        """The rows of `source`, which :meth:`accepts` took; `name` names it in messages, `delimiter` separates
        the fields of a delimited text file (readers of other formats ignore it). Raises InputError."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f'<data reader {self.name!r}>'
