"""Which kind rows are: read off a header's column names where it names them, else off the cells (the modality
of each column's first item, and whether the second column repeats like labels do: short texts that repeat beside
items of another modality, such as image files, are labels however few the rows).

Only decides; :mod:`finetune.data.build` checks the rows and builds the data.
"""
from __future__ import annotations

from typing import Sequence

from ..modalities import item_modality
from .kind_registry import kind_names
from .kinds import DataKind, get_kind
from .training_data import hashable_key

#: header names that say what a column is
LABEL_NAMES = {'label', 'labels', 'class', 'category', 'target'}
SCORE_NAMES = {'score', 'similarity', 'relevance', 'label_score'}
IMAGE_NAMES = {'image', 'img', 'image_path', 'path', 'file'}
TEXT_NAMES = {'text', 'caption', 'query', 'doc', 'document', 'item', 'sentence', 'sentence1', 'sentence2', 'a',
              'b', 'anchor', 'positive', 'question', 'answer', 'passage', 'title'}
KNOWN_HEADERS = LABEL_NAMES | SCORE_NAMES | IMAGE_NAMES | TEXT_NAMES


def header_names() -> set[str]:
    """The column names that make a first row a header: :data:`KNOWN_HEADERS` and the columns of every
    registered kind (a plugin's kind names its own)."""
    return KNOWN_HEADERS | {c for name in kind_names() for c in get_kind(name).columns}


def kind_of_header(header: Sequence[str]) -> str | None:
    """The registered kind with a layout of its own (its ``read_rows``) whose columns the header names, or None."""
    names = {str(h).strip().lower() for h in header}
    for name in kind_names():
        kind = get_kind(name)
        if type(kind).read_rows is not DataKind.read_rows and set(kind.columns) <= names:
            return name
    return None


def labels_come_first(names: Sequence[str]) -> bool:
    """Whether a two-column header reads 'label, text': the items are in the second column."""
    return names[0] in LABEL_NAMES and names[1] not in LABEL_NAMES


def detect_two_columns(a: list, b: list, names: list[str]) -> str:
    """labeled, pairs or text-image, from column names where known, else from the cells."""
    if names[1] in LABEL_NAMES:
        return 'labeled'
    mod_a, mod_b = item_modality(a[0]), item_modality(b[0])
    if mod_b == 'other':
        return 'labeled'  # numbers or other hashables in the second column are labels
    across = 'text-image' if {mod_a, mod_b} == {'text', 'image'} else 'labeled'
    if mod_a == mod_b != 'text' or names[1] in TEXT_NAMES | IMAGE_NAMES:
        return across if mod_a != mod_b else 'pairs'
    if mod_a == 'text' and mod_b == 'image':
        return 'text-image'  # an image is no label: texts sharing an image are several captions of it
    # a text column beside items: labels repeat across many rows, captions and documents mostly do not
    labels_repeat = len(set(map(hashable_key, b))) <= max(1, len(b) // 2)
    if labels_repeat or (mod_a != 'text' and names_beside_items(a, b)):
        return 'labeled'
    return across if mod_a != mod_b else 'pairs'


def names_beside_items(items: list, texts: list, words: int = 3) -> bool:
    """Whether `texts`, beside `items` that are no texts (image files, ...), are their labels: some text repeats
    while no item does, and every text is a name of at most `words` words rather than a sentence. (Captions
    repeat their image, as several captions of one picture; labels repeat themselves, however few the rows.)"""
    distinct = set(map(hashable_key, texts))
    return len(distinct) < len(texts) and len(set(map(hashable_key, items))) == len(items) and \
        all(isinstance(t, str) and len(t.split()) <= words for t in distinct)


def text_first(a: list, b: list) -> tuple[list, list]:
    """The two columns of text-image rows with the texts first."""
    if item_modality(a[0]) == 'image' and item_modality(b[0]) == 'text':
        return b, a
    return a, b
