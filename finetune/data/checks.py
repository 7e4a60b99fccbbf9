"""Checking every file a data set names before training starts: all missing or unreadable files at once,
with their rows, instead of one of them mid-epoch.

A check is cheap (a stat and a header read, by the model that will read the file: see
:meth:`finetune.backbone.Backbone.check_file`) and runs on threads, since it waits on the disk.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ..errors import InputError
from ..modalities import item_modality
from .training_data import TrainingData

#: problems listed in full in the message; the rest are counted
MAX_SHOWN = 5
#: from this many files on, a progress bar is shown on a terminal
PROGRESS_FROM = 2000


def file_items(column: list) -> dict[str, int]:
    """The distinct file paths among `column`'s items (images, meshes, point files), each with its first row."""
    found: dict[str, int] = {}
    for i, item in enumerate(column):
        if isinstance(item, (str, os.PathLike)) and item_modality(item) not in ('text', 'other'):
            found.setdefault(os.fspath(item), i)
    return found


def check_files(data: TrainingData, checkers: tuple[Callable[[str], str | None] | None, ...], name: str,
                progress: bool | None = None) -> int:
    """Check the files of each side of `data` with that side's checker (``model.check_file``), which returns
    why a file cannot be used, or None. Returns the number of files checked.

    Raises InputError naming `name` and listing, with their rows, the first :data:`MAX_SHOWN` problems and
    the number of others."""
    sides = [data.a] + ([data.b] if data.b is not None else [])
    jobs: list[tuple[str, int, Callable[[str], str | None]]] = []
    for column, checker in zip(sides, checkers):
        if checker is not None:
            jobs += [(path, row, checker) for path, row in file_items(column).items()]
    if not jobs:
        return 0
    problems = _run(jobs, progress)
    if problems:
        problems.sort(key=lambda p: p[0])
        shown = [f'  {data.where(row)}: {path!r} {reason}' for row, path, reason in problems[:MAX_SHOWN]]
        more = f'\n  ... and {len(problems) - MAX_SHOWN} more' if len(problems) > MAX_SHOWN else ''
        raise InputError(f'{name}: {len(problems)} of {len(jobs):,} files cannot be used:\n' + '\n'.join(shown)
                         + more + '\nFix or remove those rows; nothing was trained.')
    return len(jobs)


def _run(jobs: list[tuple[str, int, Callable[[str], str | None]]], progress: bool | None) -> list[tuple]:
    workers = min(32, 4 * (os.cpu_count() or 2), len(jobs))

    def one(job: tuple) -> tuple | None:
        path, row, checker = job
        try:
            reason = checker(path)
        except Exception as exc:  # noqa: BLE001 - a checker's own failure is a reason too
            reason = f'could not be checked ({type(exc).__name__}: {exc})'
        return (row, path, reason) if reason else None

    show = sys.stderr.isatty() if progress is None else progress
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(one, jobs, chunksize=64)
        if show and len(jobs) >= PROGRESS_FROM:
            results = with_progress(results, len(jobs), 'checking files')
        return [r for r in results if r is not None]


def with_progress(results: Any, total: int, label: str):
    """`results`, passed through while a transient rich progress bar labelled `label` counts to `total`."""
    from rich.progress import Progress
    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=total)
        for result in results:
            bar.advance(task)
            yield result
