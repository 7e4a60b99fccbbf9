"""Model cards: the ``README.md`` every saved model and every export carries.

A card says what the model is (base model, family, output size, pooler, head), how it was trained (data, loss,
epochs, batch size, precision), its retrieval metrics before and after, and how to load it: with finetune, and
for an export with the runtime it was written for. Everything comes from the folder's ``finetune_config.json``.
"""
from __future__ import annotations

from typing import Any, Iterable

CARD_FILE = 'README.md'


def _head(options: dict[str, Any]) -> str:
    parts = []
    if options.get('output_dim'):
        hidden = (options.get('head_options') or {}).get('hidden_dims') or []
        shape = ' -> '.join(str(d) for d in (*hidden, options['output_dim']))
        parts.append(f'projection to {shape}' + (' (MLP)' if hidden else ' (one linear layer)'))
    if options.get('head') == 'cosine_classifier':
        parts.append('a cosine classifier used in training only (not part of the embedding)')
    return '; '.join(parts) or 'none'


def _what(config: dict[str, Any]) -> list[str]:
    options = config.get('model_options', {})
    pooler = options.get('pooler')
    pooler_text = f'{pooler} {options.get("pooler_options") or ""}'.strip() if pooler else "the model's own pooling"
    return [
        '| | |', '|---|---|',
        f"| base model | `{config.get('original_name', config.get('name'))}` |",
        f"| family | {config.get('family') or 'unknown'} ({config.get('modality', '?')}) |",
        f"| output size | {config.get('output_dim')} |",
        f'| pooler | {pooler_text} |',
        f'| head | {_head(options)} |',
        f"| L2-normalized | {'yes' if options.get('normalize', True) else 'no'} |",
    ]


def _training(training: dict[str, Any] | None) -> list[str]:
    if not training:
        return ['Not fine-tuned with `finetune.fit` (saved as built, or merged).']
    rows = [('data', training.get('data') or training.get('data_kind')), ('loss', training.get('loss')),
            ('epochs', training.get('epochs')), ('batch size', training.get('batch_size')),
            ('learning rate', training.get('learning_rate')), ('precision', training.get('precision'))]
    return ['| | |', '|---|---|'] + [f'| {k} | {v} |' for k, v in rows if v is not None]


def _number(value: Any) -> str:
    return f'{value:.4f}' if isinstance(value, float) else ('' if value is None else str(value))


def metrics_table(columns: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows: one per metric, one column per named set of figures (``before``, ``after``, ...)."""
    columns = {k: v for k, v in columns.items() if isinstance(v, dict) and v}
    if not columns:
        return []
    names: list[str] = []
    for figures in columns.values():
        names += [n for n, v in figures.items() if n not in names and isinstance(v, (int, float))]
    lines = ['| metric | ' + ' | '.join(columns) + ' |', '|---' * (len(columns) + 1) + '|']
    for n in names:
        lines.append(f'| {n} | ' + ' | '.join(_number(f.get(n)) for f in columns.values()) + ' |')
    return lines


def _metrics(metrics: dict[str, Any]) -> list[str]:
    table = metrics_table({k: metrics.get(k) for k in ('before', 'after')})
    chosen_on = (metrics.get('selected_on') or {}).get('data') if isinstance(metrics.get('selected_on'), dict) \
        else None
    if table and chosen_on:
        table += ['', f'"after" is the model chosen on this {chosen_on}, so it flatters.']
    for key, title in (('guard', 'Guard data (general domain):'), ('test', 'Test data (chose nothing):')):
        figures = metrics.get(key)
        if isinstance(figures, dict):
            table += [''] + [title, ''] + metrics_table({k: figures.get(k) for k in ('before', 'after')})
    return table or ['No evaluation data was given, so there are no retrieval metrics.']


def _loading(config: dict[str, Any], usages: Iterable[str], loads_with_finetune: bool) -> list[str]:
    lines = []
    if loads_with_finetune:
        lines = ['```python', 'import finetune', '', "model = finetune.load('.')   # this folder",
                 "model.encode([...])           # (N, %s) numpy" % config.get('output_dim'), '```']
    for usage in usages:
        lines += ['', '```python', usage.rstrip(), '```']
    return lines


def model_card(config: dict[str, Any], usages: Iterable[str] = (), title: str | None = None,
               more: Iterable[str] = (), loads_with_finetune: bool = True) -> str:
    """The README.md text for a folder whose ``finetune_config.json`` is `config`; `usages` are extra loading
    snippets (an export's runtime), `more` extra Markdown lines (an export's parity figures);
    `loads_with_finetune`: whether ``finetune.load`` reads the folder."""
    name = config.get('original_name', config.get('name'))
    lines = [f'# {title or name}', '',
             'An embedding model made with finetune (backbone -> pooler -> head -> L2 normalization).', '', '## What it is', '', *_what(config), '', '## How it was trained', '',
             *_training(config.get('training')), '', '## Retrieval metrics', '', *_metrics(config.get('metrics') or {}),
             '']
    more = list(more)
    if more:
        lines += [*more, '']
    lines += ['## How to load it', '', *_loading(config, usages, loads_with_finetune), '']
    return '\n'.join(lines)
