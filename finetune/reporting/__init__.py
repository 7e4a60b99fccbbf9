"""Run reports: one self-contained HTML page per fit (``output_dir/report.html``, ``run.report(path)``,
``finetune report DIR``) with the curves, the before / after metrics, retrieval examples before and after, a map
of the eval embeddings, and the run's settings, data, device and time.

Layout: ``collect`` (what a fit records and gathers into JSON-able report data, saved as ``report.json`` with the
model), ``neighbours`` (retrieval examples and the embedding map from the evaluations' embeddings), ``items``
(items drawn by modality), ``plots`` (matplotlib figures as PNG data URIs), ``page`` (the HTML).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

from ..errors import InputError
from .collect import REPORT_DATA, REPORT_PAGE, jsonable, report_data, start


def build_report(report: dict[str, Any]) -> str:
    """The HTML page of `report` (report data, as saved in ``report.json``)."""
    from .page import build_html
    return build_html(report)


def write_report(report: dict[str, Any], path: str) -> str:
    """Write the page of `report` to `path` (a file; a folder gets ``report.html`` in it); returns the path."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, REPORT_PAGE)
    html = build_report(report)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(html)
    os.replace(tmp, path)
    return os.path.abspath(path)


def save_report_data(report: dict[str, Any], folder: str) -> str:
    """Write `report` as ``folder/report.json``, and its figures into the folder's model card; returns the
    path."""
    path = os.path.join(folder, REPORT_DATA)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(report, f)
    from .card import write_card_figures
    write_card_figures(report, folder)
    return path


def load_report_data(folder: str) -> dict[str, Any]:
    """The report data of a run folder (``output_dir``) or a saved model: its ``report.json`` (in the folder or in
    its ``model`` folder), else what the model's ``finetune_config.json`` holds (metrics and settings; no curves
    or examples). Read as JSON only. Raises InputError for a folder that is neither."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise InputError(f'report: {folder!r} is not a folder; expected a fit output_dir or a saved model folder '
                         f'(one holding {REPORT_DATA} or finetune_config.json).')
    for candidate in (folder, os.path.join(folder, 'model')):
        path = os.path.join(candidate, REPORT_DATA)
        if os.path.isfile(path):
            return _read_json(path)
    from ..artifacts import CONFIG_FILE
    for candidate in (folder, os.path.join(folder, 'model')):
        path = os.path.join(candidate, CONFIG_FILE)
        if os.path.isfile(path):
            config = _read_json(path)
            return jsonable({'title': f'{config.get("original_name", config.get("name", "model"))}',
                             'model': config.get('name'), 'model_dir': os.path.abspath(candidate),
                             'metrics': config.get('metrics') or {}, 'config': config.get('training') or {},
                             'data': {'train': (config.get('training') or {}).get('data')}})
    raise InputError(f'report: {folder!r} holds no {REPORT_DATA} and no {CONFIG_FILE} (nor a model folder with '
                     f'one); expected a fit output_dir or a saved model folder.')


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding='utf-8') as f:
            value = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f'report: could not read {path!r} as JSON ({exc}).') from exc
    if not isinstance(value, dict):
        raise InputError(f'report: {path!r} holds a {type(value).__name__}; expected a JSON object.')
    return value


def finish(trainer, run) -> None:
    """At the end of a fit (main process): the report data on ``run.report_data``, and with eval data and an
    output_dir, ``output_dir/report.html``. A report that cannot be made is a warning: the model is not lost."""
    if not trainer.accelerator.is_main_process:
        return
    started = time.perf_counter()
    try:
        run.report_data = report_data(trainer, run)
        if trainer.eval_data is not None and trainer.config.output_dir is not None:
            path = write_report(run.report_data, os.path.join(trainer.config.output_dir, REPORT_PAGE))
            trainer.say(f'report: {path} ({os.path.getsize(path) / 1e6:.1f} MB, made in '
                        f'{time.perf_counter() - started:.1f} s)')
    except Exception as exc:  # noqa: BLE001 - the trained model matters more than its report
        trainer.say(f'warning: could not write the run report ({type(exc).__name__}: {exc})')


__all__ = ['build_report', 'write_report', 'save_report_data', 'load_report_data', 'report_data', 'start', 'finish',
           'REPORT_DATA', 'REPORT_PAGE']
