"""The model card's figures: a saved model's ``README.md`` (:mod:`finetune.card`) gets the training curves and the
before / after metrics as images (``figures/*.png`` beside it), drawn from the run report's data."""
from __future__ import annotations

import base64
import os
from typing import Any

from . import plots
from .page import curve_figures

FIGURES = 'figures'


def metrics_bars_png(metrics: dict[str, Any], names: list[str]) -> str | None:
    """Before / after bars of the metrics `names` (those both sides have)."""
    before, after = metrics.get('before') or {}, metrics.get('after') or {}
    names = [n for n in names if isinstance(before.get(n), (int, float)) and isinstance(after.get(n), (int, float))]
    if not names:
        return None
    return plots.bars_png(names, [float(before[n]) for n in names], [float(after[n]) for n in names])


def _summary_names(report: dict[str, Any]) -> list[str]:
    after = (report.get('metrics') or {}).get('after') or {}
    wanted = [n for n in after if n.split('@')[0] in ('ndcg', 'map', 'mrr', 'hit', 'recall') and
              n.split('@')[-1] in ('1', '10')] or list(report.get('summary_metrics') or [])
    return [n for n in wanted if not n.startswith('num_')][:8]


def write_card_figures(report: dict[str, Any], folder: str) -> list[str]:
    """Write the figures into ``folder/figures`` and add them to ``folder/README.md`` (when it exists); returns the
    Markdown lines added."""
    figures = []
    bars = metrics_bars_png(report.get('metrics') or {}, _summary_names(report))
    if bars:
        figures.append(('metrics.png', bars, 'retrieval metrics before and after'))
    for html in curve_figures(report)[:3]:  # loss, learning rate, the metric per evaluation
        uri = html.split('src="', 1)[1].split('"', 1)[0]
        alt = html.split('alt="', 1)[1].split('"', 1)[0]
        figures.append((alt.replace(' ', '_').replace('@', '_at_') + '.png', uri, alt))
    if not figures:
        return []
    os.makedirs(os.path.join(folder, FIGURES), exist_ok=True)
    lines = ['## Training', '']
    for name, uri, alt in figures:
        with open(os.path.join(folder, FIGURES, name), 'wb') as f:
            f.write(base64.b64decode(uri.split(',', 1)[1]))
        lines.append(f'![{alt}]({FIGURES}/{name})')
    card = os.path.join(folder, 'README.md')
    if os.path.isfile(card):
        with open(card, 'a', encoding='utf-8') as f:
            f.write('\n' + '\n'.join(lines) + '\n')
    return lines
