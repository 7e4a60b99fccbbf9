"""The report page: one self-contained HTML file (figures embedded as PNG data URIs, no script, no network) drawn
from a run's report data (:mod:`.collect`)."""
from __future__ import annotations

from html import escape
from typing import Any

from . import plots

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1180px;margin:0 auto;padding:18px 24px 48px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid #dde1e8;
padding-bottom:4px}h3{font-size:14px;margin:16px 0 6px}h4{font-size:13px;margin:12px 0 4px}
.sub{color:#5b6472;font-size:13px}.card{background:#fff;border:1px solid #e3e6ec;border-radius:8px;padding:12px 14px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 10px;text-align:right;border-bottom:1px solid #eef0f3}
td:first-child,th:first-child{text-align:left}.up{color:#12833b}.down{color:#c0362c}
.kv td{text-align:left;vertical-align:top}.kv td:first-child{color:#5b6472;white-space:nowrap}
.ex{margin-bottom:14px}.q{font-weight:600;margin-bottom:6px}.row{display:flex;gap:8px;align-items:flex-start;
margin:4px 0}.lab{width:54px;font-size:12px;color:#5b6472;padding-top:6px}.n{width:150px;font-size:12px;
border:2px solid #e3e6ec;border-radius:6px;padding:4px;background:#fff;overflow-wrap:anywhere}
.n.hit{border-color:#2ca02c;background:#f0fbf2}.n img,.q img{display:block;max-width:112px;max-height:112px}
.s{color:#8a93a1;font-size:11px}img.fig{max-width:100%;height:auto}
"""


def _number(value: Any) -> str:
    return '–' if not isinstance(value, (int, float)) or isinstance(value, bool) else f'{value:.4f}'


def _change(old: Any, new: Any) -> str:
    if not isinstance(old, (int, float)) or not isinstance(new, (int, float)):
        return '<td>–</td>'
    delta = new - old
    text = f'{delta:+.4f}'
    css = '' if text in ('+0.0000', '-0.0000') else (' class="up"' if delta > 0 else ' class="down"')
    return f'<td{css}>{text}</td>'


def metrics_rows(prefix: str, before: dict | None, after: dict | None) -> list[str]:
    """Table rows ``metric | before | after | change`` of two metric dicts (counts left out)."""
    before, after = before or {}, after or {}
    names = [k for k in {**before, **after} if not k.startswith('num_')]
    return [f'<tr><td>{escape(prefix + k)}</td><td>{_number(before.get(k))}</td><td>{_number(after.get(k))}</td>'
            f'{_change(before.get(k), after.get(k))}</tr>' for k in names
            if isinstance(after.get(k, before.get(k)), (int, float))]


def metrics_section(metrics: dict) -> str:
    """The before / after table: the eval data, then guard data, test data and each Matryoshka size."""
    if not metrics.get('after') and not metrics.get('before'):
        return '<p class="sub">No evaluation data: no retrieval metrics.</p>'
    rows = metrics_rows('', metrics.get('before'), metrics.get('after'))
    for name, label in (('guard', 'guard '), ('test', 'test ')):
        part = metrics.get(name)
        if isinstance(part, dict) and (part.get('after') or part.get('before')):
            rows += ['<tr><th colspan="4">' + escape(f'{name} data') + '</th></tr>']
            rows += metrics_rows(label, part.get('before'), part.get('after'))
    for size, part in sorted((metrics.get('dims') or {}).items(), key=lambda kv: int(kv[0])):
        rows += [f'<tr><th colspan="4">at {escape(str(size))} dimensions</th></tr>']
        rows += metrics_rows(f'@{size} ', part.get('before'), part.get('after'))
    count = (metrics.get('after') or {}).get('num_queries')  # none for scored data and several datasets
    queries = f'{int(count)} queries. ' if isinstance(count, (int, float)) else ''
    caption = f'<p class="sub">{queries}{escape(_choice(metrics))}</p>'
    return ('<table><tr><th>metric</th><th>before</th><th>after</th><th>change</th></tr>' + ''.join(rows) +
            '</table>' + caption)


def _choice(metrics: dict) -> str:
    """One sentence: which model was handed back, chosen on what."""
    selection, wise = metrics.get('selection') or {}, metrics.get('wise_ft') or {}
    chosen = selection.get('chosen') or {}
    out = ''
    if chosen.get('model'):
        out = (f'After: the model chosen by {selection.get("metric")} among {len(selection.get("curve") or [])} '
               f'candidates, {chosen["model"]}')
        if (metrics.get('selected_on') or {}).get('data'):
            out += f' (chosen on this {metrics["selected_on"]["data"]}, so it flatters)'
        out += '.'
    if isinstance(wise.get('alpha'), (int, float)):
        out += f' WiSE-FT alpha {wise["alpha"]}.'
    return out.strip()


def _figure(uri: str, alt: str) -> str:
    return f'<div class="card"><img class="fig" src="{uri}" alt="{escape(alt)}"></div>'


def curve_figures(report: dict) -> list[str]:
    """The loss, learning-rate, metric, guard and WiSE-FT curves that the data has, as ``<img>`` cards."""
    curves, metrics = report.get('curves') or {}, report.get('metrics') or {}
    out = []
    if curves.get('loss'):
        out.append(_figure(plots.line_png(curves['loss_steps'], curves['loss'], 'training loss', 'loss',
                                          smooth=True), 'training loss'))
    if curves.get('learning_rate'):
        out.append(_figure(plots.line_png(curves['steps'], curves['learning_rate'], 'learning rate',
                                          'learning rate'), 'learning rate'))
    selection = metrics.get('selection') or {}
    curve = [c for c in selection.get('curve') or [] if not str(c.get('model', '')).startswith('WiSE')]
    metric = selection.get('metric')
    if curve and metric:
        chosen = selection.get('chosen') or {}
        marks = [(chosen['step'], chosen[metric], f'chosen: {chosen.get("model")}')] \
            if chosen.get('step') is not None and chosen.get(metric) is not None \
            and not str(chosen.get('model', '')).startswith('WiSE') else []
        out.append(_figure(plots.line_png([c['step'] for c in curve], [c[metric] for c in curve],
                                          f'{metric} per evaluation', metric, marks=marks), f'{metric} curve'))
        guard = selection.get('guard_metric')
        key = f'guard {guard}'
        if guard and all(key in c for c in curve):
            base = curve[0][key]
            out.append(_figure(plots.line_png(
                [c['step'] for c in curve], [c[key] for c in curve], f'guard data {guard}', guard,
                baseline=base - (selection.get('guard_tolerance') or 0),
                baseline_label='lowest a candidate may reach'), 'guard curve'))
    elif curves.get('evaluations') and report.get('summary_metrics'):
        name = report['summary_metrics'][0]
        points = [(e['step'], e['metrics'].get(name)) for e in curves['evaluations'] if name in e['metrics']]
        base = (metrics.get('before') or {}).get(name)
        if base is not None:
            points.insert(0, (0, base))
        if points:
            out.append(_figure(plots.line_png([p[0] for p in points], [p[1] for p in points],
                                              f'{name} per evaluation', name), f'{name} curve'))
    wise = metrics.get('wise_ft') or {}
    grid = wise.get('grid') or []
    if len(grid) > 1 and metric and all(metric in g for g in grid):
        marks = [(wise['alpha'], next(g[metric] for g in grid if g['alpha'] == wise['alpha']),
                  f'alpha {wise["alpha"]}')] if any(g['alpha'] == wise.get('alpha') for g in grid) else []
        out.append(_figure(plots.line_png([g['alpha'] for g in grid], [g[metric] for g in grid],
                                          'WiSE-FT: (1 - alpha) base + alpha tuned', metric, xlabel='alpha',
                                          marks=marks), 'WiSE-FT curve'))
    if curves.get('grad_norm') and len(curves['grad_norm']) > 1:
        out.append(_figure(plots.line_png(curves['grad_norm_steps'], curves['grad_norm'], 'gradient norm (before '
                                          'clipping)', 'norm', smooth=True), 'gradient norm'))
    if curves.get('samples_per_second') and len(curves['samples_per_second']) > 1:
        out.append(_figure(plots.line_png(curves['steps'], curves['samples_per_second'], 'throughput',
                                          'samples / s (running mean)'), 'throughput'))
    return out


def _item(shown: dict, css: str = 'n', score: float | None = None) -> str:
    body = ''
    if shown.get('image'):
        body += f'<img src="{shown["image"]}" alt="{escape(shown.get("caption", "item"))}">'
        if shown.get('caption'):
            body += f'<div class="s">{escape(shown["caption"])}</div>'
    if shown.get('text'):
        body += f'<div>{escape(shown["text"])}</div>'
    if score is not None:
        body += f'<div class="s">cos {score:.3f}</div>'
    return f'<div class="{css}">{body}</div>'


def example_block(entry: dict) -> str:
    rows = []
    for side in ('before', 'after'):
        cells = ''.join(_item(n['item'], 'n hit' if n['hit'] else 'n', n['score']) for n in entry[side])
        rows.append(f'<div class="row"><div class="lab">{side}<br><span class="s">first hit #'
                    f'{entry[f"rank_{side}"]}</span></div>{cells}</div>')
    query = _item(entry['query_item'], 'q')
    return (f'<div class="card ex">{query}<div class="s">{entry["relevant"]} relevant; reciprocal rank '
            f'{entry["change"]:+.3f}</div>{"".join(rows)}</div>')


NO_EXAMPLES = ('No retrieval examples: the run has no evaluation of the base model (a resumed run) or its data is '
               'not ranked (scored pairs).')
MAP_NOTE = ('PCA of the eval embeddings, fitted before and after separately. Same colour: items of one label '
            '(labeled data) or a query (circle) and its relevant documents (triangles); grey: the rest.')


def retrieval_section(retrieval: dict | None) -> tuple[str, str]:
    """The examples' and the map's HTML; for several eval datasets, one part per dataset under its name."""
    if not retrieval:
        return f'<p class="sub">{NO_EXAMPLES}</p>', ''
    if 'datasets' not in retrieval:
        return _examples_html(retrieval), f'<p class="sub">{MAP_NOTE}</p>' + _map_html(retrieval)
    examples, maps = [], [f'<p class="sub">{MAP_NOTE}</p>']
    for name, part in retrieval['datasets'].items():
        examples.append(f'<h3>eval dataset {escape(name)}</h3>')
        examples.append(_examples_html(part) if part else f'<p class="sub">{NO_EXAMPLES}</p>')
        if part:
            maps.append(f'<h3>eval dataset {escape(name)}</h3>' + _map_html(part, f'embedding map of {name}'))
    return ''.join(examples), ''.join(maps) if len(maps) > 1 else ''


def _examples_html(retrieval: dict) -> str:
    found = retrieval['examples']
    head = (f'<p class="sub">{found.get("compared", 0)} queries compared: '
            f'{100 * found.get("better_share", 0):.1f}% found their first relevant document higher after '
            f'training, {100 * found.get("worse_share", 0):.1f}% lower. Green: relevant. Top 5 each way.</p>')
    parts = [head]
    for group, title in (('improved', 'Improved most'), ('worse', 'Got worse')):
        parts.append(f'<h4>{title}</h4>')
        parts += [example_block(e) for e in found[group]] or ['<p class="sub">none</p>']
    return ''.join(parts)


def _map_html(retrieval: dict, alt: str = 'embedding map') -> str:
    return _figure(plots.embedding_map_png(retrieval['map']), alt)


def _kv(rows: dict) -> str:
    cells = ''.join(f'<tr><td>{escape(str(k))}</td><td>{escape(str(v))}</td></tr>' for k, v in rows.items()
                    if v not in (None, '', [], {}))
    return f'<table class="kv">{cells}</table>'


def build_html(report: dict) -> str:
    """The report page of `report` (what :func:`~finetune.reporting.collect.report_data` gathers)."""
    examples, embedding_map = retrieval_section(report.get('retrieval'))
    about = {'model': report.get('model'), 'finished': report.get('finished'),
             'training time': f'{report["seconds"]} s' if report.get('seconds') is not None else None,
             'device': report.get('device'), 'precision': report.get('precision'),
             'saved to': report.get('model_dir')}
    figures = curve_figures(report)
    sections = [
        ('overview', 'Run', _kv(about)),
        ('metrics', 'Retrieval metrics before and after', metrics_section(report.get('metrics') or {})),
        ('curves', 'Curves', f'<div class="grid">{"".join(figures)}</div>' if figures else
         '<p class="sub">No curves recorded.</p>'),
        ('examples', 'Retrieval examples', examples),
        ('map', 'Embedding map', embedding_map or '<p class="sub">No embeddings recorded.</p>'),
        ('data', 'Data', _kv(report.get('data') or {})),
        ('settings', 'Settings', _kv(report.get('config') or {})),
    ]
    body = ''.join(f'<section id="{key}"><h2>{title}</h2>{html}</section>' for key, title, html in sections)
    title = escape(report.get('title') or 'finetune run')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{STYLE}</style></head>'
            f'<body><main><h1>{title}</h1><div class="sub">finetune run report</div>{body}</main></body></html>\n')
