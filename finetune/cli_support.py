"""What the command line reads and prints besides its commands: KEY=VALUE options, NAME=PATH datasets, the tables of
a run's metrics."""
from __future__ import annotations

import os

import click
from rich.console import Console

def parse_key_values(pairs: tuple[str, ...], what: str) -> dict:
    """``('pooler=GeM', 'pooler_options.p=2.4')`` -> ``{'pooler': 'GeM', 'pooler_options': {'p': 2.4}}``.

    Values are read as JSON when they parse (numbers, true/false, null, lists), else kept as strings.
    """
    import json
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition('=')
        if not sep or not key:
            raise click.BadParameter(f'{pair!r}: expected KEY=VALUE, e.g. pooler=GeM', param_hint=what)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        target = out
        *parents, leaf = key.split('.')
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return out


def named_values(values, option: str, paths: bool = True):
    """A repeatable option's values: None for none, the value of one plain value, a dict of NAME=VALUE ones (several
    datasets, or a loss per dataset). OptionError for a mix, or a name given twice."""
    from .errors import OptionError
    values = list(values or ())
    if not values:
        return None
    if len(values) == 1 and ('=' not in values[0] or (paths and os.path.exists(values[0]))):
        return values[0]
    out = {}
    for value in values:
        name, sep, rest = value.partition('=')
        if not sep or not name or not rest or (paths and os.path.exists(value)):
            raise OptionError(f'{option}: {value!r}; give one value, or NAME=VALUE for each of several datasets '
                              f'(e.g. {option} logs=logs.csv {option} scored=scored.csv).')
        if name in out:
            raise OptionError(f'{option}: the dataset {name!r} is named twice.')
        out[name] = rest
    return out


def sampling_value(value: str):
    """--dataset-sampling: a mode's name, or weights 'logs=2,scored=1'."""
    from .errors import OptionError
    if '=' not in value:
        return value
    weights = {}
    for part in value.split(','):
        name, _, weight = part.partition('=')
        try:
            weights[name.strip()] = float(weight)
        except ValueError:
            raise OptionError(f"--dataset-sampling: {part!r} is not NAME=WEIGHT; expected proportional, round_robin "
                              f"or weights such as logs=2,scored=1.") from None
    return weights


def by_dataset(metrics: dict | None) -> dict:
    """Metrics of several datasets ('logs/ndcg@10') split into one dict per dataset; others under ''."""
    out: dict = {}
    for key, value in (metrics or {}).items():
        name, sep, metric = key.rpartition('/')
        out.setdefault(name if sep else '', {})[metric if sep else key] = value
    return out


def print_tables(before: dict | None, after: dict, title: str, guard: dict | None = None) -> None:
    """One table of metrics; of several datasets' metrics, one table each and one of their mean."""
    from .evaluation import format_metrics_table
    before_by, after_by = by_dataset(before), by_dataset(after)
    for name, metrics in after_by.items():
        shown = f'{title}: {name}' if name else title if len(after_by) == 1 else \
            f"{title}: mean of each dataset's best metric"
        Console().print(format_metrics_table(before_by.get(name) if before is not None else None, metrics,
                                             title=shown, guard=guard if not name else None))


def print_run_tables(run) -> None:
    from .evaluation import format_metrics_table
    chosen_on = (run.metrics.get('selected_on') or {}).get('data')
    if run.metrics.get('after'):
        print_tables(run.metrics.get('before'), run.metrics['after'], 'retrieval metrics', run.metrics.get('guard'))
        if chosen_on:
            click.echo(f'after: chosen on this {chosen_on} (the epoch kept, WiSE-FT\'s alpha), so it flatters; '
                       f'--test-data gives a figure that chose nothing')
    test = run.metrics.get('test')
    if test and test.get('after'):
        print_tables(test.get('before'), test['after'], 'test data (chose nothing)')
    for dim, metrics in run.metrics.get('dims', {}).items():  # Matryoshka: one table per trained size
        if dim != run.model.output_dim and metrics.get('after'):
            Console().print(format_metrics_table(metrics.get('before'), metrics['after'],
                                                 title=f'retrieval metrics at {dim} dimensions'))


def alpha_or_auto(value: str, option: str):
    from .errors import OptionError
    if value == 'auto':
        return value
    try:
        return float(value)
    except ValueError:
        raise OptionError(f"{option}: expected a number in [0, 1] or 'auto', got {value!r}.") from None
