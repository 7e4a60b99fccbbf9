"""Reading training and evaluation data into one shape, :class:`TrainingData`, with its kind detected.

Kinds (Jina Finetuner's layouts):

* ``labeled``: ``item, label`` rows — items of one label are positives of each other;
* ``pairs``: ``query, doc`` rows — rows sharing a query share a label;
* ``scored``: ``a, b, score`` rows, score in [0, 1];
* ``text-image``: a text beside an image (a path, PIL image or array): pairs across two modalities.

Sources: a list of tuples (or dicts), a CSV or JSON-lines file, a folder with one sub-folder per class, a pandas
or polars DataFrame or a Hugging Face ``datasets.Dataset``, each read by its reader (:mod:`finetune.data.readers`).
:func:`load_data` picks the reader, and :func:`~finetune.data.build.from_rows` checks the rows, detects the kind
(:mod:`finetune.data.detect`) and builds the data. Every mistake is reported with the row (CSV line) that caused it.

The readers' functions are importable from here too, as they were when this module held them all.
"""
from __future__ import annotations

from typing import Any

from ..errors import InputError
from ..modalities import item_modality
from .build import from_rows
from .detect import IMAGE_NAMES, KNOWN_HEADERS, LABEL_NAMES, SCORE_NAMES, TEXT_NAMES
from .kind_registry import kind_names
from .readers import reader_for
from .readers.files import ITEM_COLUMN_NAMES, read_csv, read_items, read_jsonl
from .readers.folders import read_image_folder
from .readers.frames import from_data_frame
from .readers.hf_datasets import from_hf_dataset
from .training_data import TrainingData

__all__ = ['IMAGE_NAMES', 'ITEM_COLUMN_NAMES', 'KNOWN_HEADERS', 'LABEL_NAMES', 'SCORE_NAMES', 'TEXT_NAMES',
           'TrainingData', 'from_data_frame', 'from_hf_dataset', 'from_rows', 'item_modality', 'load_data',
           'read_csv', 'read_image_folder', 'read_items', 'read_jsonl']


def load_data(data: Any, name: str = 'train_data', kind: str | None = None, delimiter: str = ',') -> TrainingData:
    """Any supported source -> :class:`TrainingData` (kind detected unless `kind` is given), read by the first
    registered reader that accepts it; TrainingData passes through.

    Raises InputError naming `name` for anything it cannot read.
    """
    if isinstance(data, TrainingData):
        return data
    if data is None:
        raise InputError(f'{name}: no data given; expected a list of rows, a CSV path, an image folder or a '
                         f'datasets.Dataset.')
    reader = reader_for(data)
    if reader is None:
        raise InputError(f'{name}: cannot read {type(data).__name__}; expected a list of rows, a CSV path, an image '
                         f'folder, a pandas DataFrame or a datasets.Dataset.')
    return reader.read(data, name, delimiter=delimiter).to_data(kind)


def __getattr__(name: str):
    if name == 'KINDS':  # the registered kinds, read when asked (a plugin may register one)
        return kind_names()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
