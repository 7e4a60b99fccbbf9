"""The report's figures, drawn with matplotlib's Agg canvas (no display, no global backend switched) and returned
as ``data:image/png`` URIs: curves, the embedding map, a point cloud."""
from __future__ import annotations

import base64
import io
from typing import Any, Sequence

import numpy as np


#: one colour per coloured group on the map (matplotlib's tab10), and the grey of the rest
COLOURS = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22',
           '#17becf')
GREY = '#c8c8c8'


def data_uri(data: bytes, mime: str) -> str:
    """`data` as a ``data:`` URI of type `mime`."""
    return f'data:{mime};base64,' + base64.b64encode(data).decode('ascii')


def _figure(width: float = 5.2, height: float = 3.0, columns: int = 1):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        from ..errors import OptionError
        raise OptionError('the run report draws with matplotlib, which is not installed: pip install '
                          '"finetune[report]" (or pip install matplotlib).') from exc
    figure = Figure(figsize=(width, height), dpi=100, layout='constrained')
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, list(axes)


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png')
    return data_uri(buffer.getvalue(), 'image/png')


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < 2 * window:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode='valid')


def line_png(x: Sequence[float], y: Sequence[float], title: str, ylabel: str, xlabel: str = 'optimizer step',
             smooth: bool = False, marks: Sequence[tuple[float, float, str]] = (), baseline: float | None = None,
             baseline_label: str = '') -> str:
    """One curve (with a moving average when `smooth` and it is long), points in `marks` ``(x, y, label)`` ringed
    and labelled, and an optional horizontal `baseline`."""
    figure, (ax,) = _figure()
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ax.plot(x, y, color=COLOURS[0], alpha=0.35 if smooth and len(y) > 20 else 1.0, lw=1,
            marker='o' if len(y) <= 30 else None, ms=3)
    if smooth and len(y) > 20:
        ax.plot(x, _smooth(y, max(2, len(y) // 20)), color=COLOURS[0], lw=1.8, label='moving average')
        ax.legend(fontsize=7)
    if baseline is not None:
        ax.axhline(baseline, color=COLOURS[3], ls='--', lw=1, label=baseline_label)
        ax.legend(fontsize=7)
    for mx, my, label in marks:
        ax.scatter([mx], [my], s=110, facecolors='none', edgecolors=COLOURS[3], linewidths=2, zorder=3)
        ax.annotate(label, (mx, my), textcoords='offset points', xytext=(6, 6), fontsize=8, color=COLOURS[3])
    _style(ax, title, xlabel, ylabel)
    return _png(figure)


def embedding_map_png(points: dict[str, Any]) -> str:
    """The before / after embedding maps side by side (see :func:`~finetune.reporting.neighbours.embedding_map`)."""
    figure, axes = _figure(9.0, 4.2, columns=2)
    colours = np.asarray(points['colours'])
    markers = np.asarray(points['markers'])
    for ax, name in zip(axes, ('before', 'after')):
        xy = np.asarray(points[name], dtype=float).reshape(-1, 2)
        for marker in ('o', '^'):
            grey = (colours < 0) & (markers == marker)
            ax.scatter(xy[grey, 0], xy[grey, 1], s=6, c=GREY, marker=marker, linewidths=0)
        for c in sorted(set(colours[colours >= 0].tolist())):
            for marker in ('o', '^'):
                chosen = (colours == c) & (markers == marker)
                if chosen.any():
                    ax.scatter(xy[chosen, 0], xy[chosen, 1], s=26 if marker == 'o' else 18,
                               c=COLOURS[c % len(COLOURS)], marker=marker, edgecolors='white', linewidths=0.4,
                               label=points['legend'][c] if marker == 'o' and c < len(points['legend']) else None)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f'{name} training', fontsize=10)
    handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        labels = [label if len(label) <= 34 else label[:33] + '…' for label in labels]
        figure.legend(handles, labels, loc='outside lower center', ncol=min(3, len(labels)), fontsize=7,
                      frameon=False)
    return _png(figure)


def points_png(points: np.ndarray, size: float = 1.3) -> str:
    """A small 3-D scatter of an ``(N, 3)`` point cloud (at most 1,024 points), coloured by depth."""
    if len(points) > 1024:
        points = points[np.random.default_rng(0).choice(len(points), 1024, replace=False)]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(size, size), dpi=80)
    FigureCanvasAgg(figure)
    ax = figure.add_axes((0, 0, 1, 1), projection='3d')
    ax.scatter(points[:, 0], points[:, 2], points[:, 1], s=1.5, c=points[:, 2], cmap='viridis', depthshade=False)
    ax.set_axis_off()
    ax.view_init(elev=20, azim=-60)
    return _png(figure)


def bars_png(names: list[str], before: list[float], after: list[float]) -> str:
    """Grouped bars: each metric before (grey) and after (blue), the after value written on its bar."""
    figure, (ax,) = _figure(max(4.0, 0.9 * len(names) + 1.5), 3.0)
    x = np.arange(len(names))
    ax.bar(x - 0.2, before, 0.4, color=GREY, label='before')
    bars = ax.bar(x + 0.2, after, 0.4, color=COLOURS[0], label='after')
    ax.bar_label(bars, fmt='%.3f', fontsize=7, padding=2)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylim(0, max(1.0, max(after + before) * 1.15))
    ax.legend(fontsize=7, loc='upper left')
    _style(ax, 'retrieval metrics', '', '')
    return _png(figure)
