"""The JSON-lines file synthesis writes as it goes, and reading it back to resume (as data only: ``json.loads``).

One line per training row; the rows of one query are written together, each saying how many its query has
(``negatives``), so a query is complete or not there at all: lines after the last complete query (a run killed
while writing) are cut off when the file is resumed.

Beside it, ``<name>.meta.json`` holds the run's settings and a fingerprint of its queries and its corpus (both
checked on resume, so that one file never mixes rows made two ways, or rows whose positives are not in the
corpus) and the queries done that made no row (every candidate a near-duplicate), which a resumed run skips too. Both are read as data only (``json.loads``)."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable

from ..errors import InputError

#: the fields of every line
FIELDS = ('query', 'positive', 'negative', 'margin', 'positive_score', 'negative_score', 'negative_rank', 'negatives')


def check_output(path: Any, resume: bool, overwrite: bool) -> str | None:
    """`path` as a string (None stays None); InputError for a path that is not ``.jsonl``, in no folder, or that
    exists while neither `resume` nor `overwrite` says what to do with it."""
    if path is None:
        if resume:
            raise InputError('resume=True needs output=: the file whose queries are skipped.')
        return None
    path = os.fspath(path)
    if not path.lower().endswith('.jsonl'):
        raise InputError(f'output: {path!r} must be a JSON-lines file ending in .jsonl.')
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f'output: the folder {folder!r} does not exist.')
    if os.path.exists(path) and not (resume or overwrite):
        raise InputError(f'output: {path!r} exists. Pass resume=True (--resume) to skip the queries it holds and go '
                         f'on, or overwrite=True (--overwrite) to start it again.')
    return path


def read_rows(path: str, queries: set[str]) -> list[dict]:
    """The rows of the complete queries in `path` (none when it does not exist); lines after the last complete
    query are cut off the file. InputError for a line that is not a row, or a query not among `queries`."""
    if not os.path.exists(path):
        return []
    rows: list[dict] = []
    pending: list[dict] = []
    kept = 0
    with open(path, 'rb') as f:
        for number, raw in enumerate(f, 1):
            if not raw.endswith(b'\n'):
                break  # the last line of a killed write
            row = _row(raw, path, number)
            if row['query'] not in queries:
                raise InputError(f'{os.path.basename(path)}, line {number}: the query {row["query"][:80]!r} is not '
                                 f'among query_data; resume with the queries that made the file, or write to '
                                 f'another output.')
            pending.append(row)
            if len(pending) == row['negatives'] and all(r['query'] == row['query'] for r in pending):
                rows += pending
                pending = []
                kept = f.tell()
            elif len(pending) > row['negatives'] or pending[0]['query'] != row['query']:
                raise InputError(f'{os.path.basename(path)}, line {number}: the rows of a query are incomplete '
                                 f'before this line; the file was not written by one synthesize run.')
    if kept != os.path.getsize(path):
        with open(path, 'r+b') as f:
            f.truncate(kept)
    return rows


def _row(raw: bytes, path: str, number: int) -> dict:
    where = f'{os.path.basename(path)}, line {number}'
    try:
        row = json.loads(raw)
    except ValueError as exc:
        raise InputError(f'{where}: not JSON ({exc}); is this a file synthesize wrote?') from None
    if not isinstance(row, dict) or any(k not in row for k in FIELDS):
        raise InputError(f'{where}: expected an object with {", ".join(FIELDS)}; is this a file synthesize wrote?')
    if not isinstance(row['negatives'], int) or row['negatives'] < 1 or not isinstance(row['query'], str):
        raise InputError(f'{where}: "negatives" must be a positive integer and "query" a text.')
    return row


def meta_path(path: str) -> str:
    """The settings file beside the rows file `path`: ``synth.jsonl`` -> ``synth.meta.json``."""
    return os.path.splitext(path)[0] + '.meta.json'


def fingerprint(texts: Iterable[str]) -> str:
    """The sha256 of `texts` in order (each text's length, then its UTF-8 bytes: no two lists share one)."""
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode('utf-8')
        digest.update(len(encoded).to_bytes(8, 'little') + encoded)
    return digest.hexdigest()


def read_meta(path: str, settings: dict, inputs: dict | None = None) -> tuple[set[str], bool]:
    """(the queries done without rows, whether there was a settings file) of the run that wrote `path`.
    InputError when its settings differ from `settings`, its inputs' fingerprints from `inputs` (``{'query_data':
    fingerprint, 'corpus_data': fingerprint}``; a file written before fingerprints is not checked), or the file is
    not one synthesize wrote."""
    meta = meta_path(path)
    if not os.path.exists(meta):
        return set(), False
    name = os.path.basename(meta)
    try:
        with open(meta, encoding='utf-8') as f:
            found = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f'{name}: not a settings file synthesize wrote ({exc}); delete it to resume without the '
                         f'check.') from None
    if not isinstance(found, dict) or not isinstance(found.get('settings'), dict) \
            or not isinstance(found.get('without_rows'), list):
        raise InputError(f'{name}: expected an object with "settings" and "without_rows"; delete it to resume without '
                         f'the check.')
    changed = [f'{key}={found["settings"].get(key)!r} there, {value!r} now' for key, value in settings.items()
               if found['settings'].get(key) != value]
    if changed:
        raise InputError(f'resume: {os.path.basename(path)} was made with other settings ({"; ".join(changed)}). '
                         f'Resume with the same ones, or write to another output (or overwrite=True).')
    _check_inputs(path, found.get('inputs'), inputs or {})
    return {q for q in found['without_rows'] if isinstance(q, str)}, True


def _check_inputs(path: str, found: Any, inputs: dict) -> None:
    if not isinstance(found, dict):
        return  # a settings file from before fingerprints
    differ = [name for name, value in inputs.items() if name in found and found[name] != value]
    if differ:
        which = ' and '.join(f'another {name} (sha256 {found[name][:12]}... there, {inputs[name][:12]}... now)'
                             for name in differ)
        raise InputError(f'resume: {os.path.basename(path)} was made from {which}: its rows would not match this '
                         f'run\'s. Resume with the {" and ".join(differ)} that made it, in the same order, or write to '
                         f'another output (or overwrite=True).')


def write_meta(path: str, settings: dict, without_rows: Iterable[str], inputs: dict | None = None) -> None:
    """Write the settings file of `path`, with the fingerprints of the run's `inputs` (see :func:`read_meta`),
    through a synced temporary file and a rename: never half written."""
    from ..files import write_text_atomically
    meta = {'settings': settings, 'inputs': inputs or {}, 'without_rows': sorted(without_rows)}
    write_text_atomically(meta_path(path), json.dumps(meta, ensure_ascii=False, indent=1))


class RowWriter:
    """Appends the rows of one query at a time to a JSON-lines file and flushes them (None: writes nothing); the
    file is synced to the disk when closed."""

    def __init__(self, path: str | None, append: bool):
        self.file = open(path, 'a' if append else 'w', encoding='utf-8') if path else None

    def write(self, rows: Iterable[dict]) -> None:
        if self.file is not None:
            self.file.write(''.join(json.dumps(row, ensure_ascii=False) + '\n' for row in rows))
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
