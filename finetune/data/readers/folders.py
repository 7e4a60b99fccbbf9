"""A folder with one sub-folder of files per class (images, or the files of a plugin's modality): labeled data,
the sub-folder's name the label of each file."""
from __future__ import annotations

import os
from typing import Any

from ...errors import InputError
from ...modalities import file_extensions, item_modality, modalities
from ..training_data import TrainingData
from .base import Reader, Table


def folder_table(path: str) -> Table:
    """The (file, class) rows of the class folders in `path`, as labeled data.

    Raises InputError when there are none, or when the folder mixes modalities."""
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    extensions = file_extensions()
    rows = []
    for name in classes:
        for file in sorted(os.listdir(os.path.join(path, name))):
            if file.lower().endswith(extensions):
                rows.append((os.path.join(path, name, file), name))
    if not rows:
        kinds = '; '.join(f'{m.name}: {" ".join(m.extensions)}' for m in modalities() if m.extensions)
        raise InputError(f'{path}: expected one sub-folder per class holding images or other item files ({kinds}), '
                         f'found none.')
    kinds = {item_modality(item) for item, _ in rows}
    if len(kinds) > 1:
        first = {m: next(item for item, _ in rows if item_modality(item) == m) for m in sorted(kinds)}
        raise InputError(f'{path}: the class folders mix ' + ' and '.join(f'{m}s (e.g. {p!r})' for m, p in
                                                                         first.items()) +
                         '; a model takes one modality, so keep one kind of file per data folder.')
    return Table(rows, os.path.basename(os.path.normpath(path)), kind='labeled')


def read_image_folder(path: str) -> TrainingData:
    """A folder with one sub-folder of files per class (images, or the files of a plugin's modality) ->
    labeled data.

    Raises InputError when there are none, or when the folder mixes modalities."""
    return folder_table(path).to_data()


class FolderReader(Reader):
    """A path to a folder of class folders."""

    name = 'folders'

    def accepts(self, source: Any) -> bool:
        return isinstance(source, (str, os.PathLike)) and os.path.isdir(os.fspath(source))

    def read(self, source: Any, name: str, delimiter: str = ',') -> Table:
        return folder_table(os.fspath(source))
