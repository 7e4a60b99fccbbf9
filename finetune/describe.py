"""Rich tables of the registry: backbones per task, a model's options, the plugins."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .heads import CLASSIFIER_OPTIONS, COSINE_CLASSIFIER, PROJECTION, PROJECTION_OPTIONS
from .model import option_schema
from .options import Option, format_default
from .poolers import pooler_class
from .registry import CROSS_ENCODERS, REGISTRIES, REGISTRY, BackboneSpec, all_tasks, check_task, registry_for_task


def _console(console: Console | None) -> Console:
    return console or Console()


def _cells(*values: Any) -> list[Text]:
    """Table cells shown literally: names, descriptions and errors may hold brackets (``list[str]``,
    ``cat[blue].jpg``) that rich would otherwise read as markup."""
    return [Text(str(v)) for v in values]


def backbones_table(task: str, specs: list[BackboneSpec], kind: str = 'backbone') -> Table:
    table = Table(title=f'finetune {kind}s: {task}')
    for column in ('name', 'task', 'output_dim', 'architecture', 'description'):
        table.add_column(column, justify='right' if column == 'output_dim' else 'left',
                         overflow='fold', no_wrap=column == 'name')
    for spec in specs:
        dim = spec.output_dim if spec.output_dim is not None else spec.embedding_dim()
        description = spec.description + (f' (alias of {spec.alias_of})' if spec.alias_of else '')
        table.add_row(*_cells(spec.name, task, dim, spec.architecture, description))
    return table


def describe_models(task: str | None = None, console: Console | None = None) -> list[BackboneSpec]:
    """Print one table per task (or only `task`): name | task | output_dim | architecture | description.

    Plugins that own a name prefix (``timm:<model>``) and plugins that failed to load are listed below
    the tables. Returns the specs shown. Raises UnknownModelError for an unknown task.
    """
    console = _console(console)
    tasks = [check_task(task)] if task is not None else list(all_tasks())
    shown: list[BackboneSpec] = []
    for t in tasks:
        registry = registry_for_task(t)
        specs = registry.specs(t)
        if specs:
            console.print(backbones_table(t, specs, registry.kind))
            shown += specs
        elif task is not None:
            console.print(Text(f'No {registry.kind} for task {t!r} is installed.'))
    for plugin in (p for registry in REGISTRIES for p in registry.plugins.values()):
        if plugin.note and (task is None or task in plugin.note):
            console.print(Text.assemble((plugin.name, 'bold'), f': {plugin.note}'))
    for failure in (f for registry in REGISTRIES for f in registry.failures):
        console.print(Text.assemble((f'plugin {failure.name!r} ({failure.target}) failed to load:', 'red'),
                                   f' {failure.error}'))
    return shown


def option_rows(spec: BackboneSpec) -> list[tuple[str, Option]]:
    """``(dotted name, option)`` for every option of `spec`, nested ones (``pooler_options.p``) included."""
    nested: dict[str, list[tuple[str, tuple[Option, ...]]]] = {
        'pooler_options': [(pooler_class(p).name, pooler_class(p).options)
                           for p in dict.fromkeys(filter(None, (spec.defaults.get('pooler'), 'GeM')))],
        'head_options': [(PROJECTION, PROJECTION_OPTIONS), (COSINE_CLASSIFIER, CLASSIFIER_OPTIONS)],
        'preprocess_options': [('', spec.preprocess_options)],
    }
    rows = []
    for option in option_schema(spec):
        if option.name == 'pooler' and spec.pooler_note:
            option = replace(option, help=f'{option.help}. {spec.pooler_note}')
        rows.append((option.name, option))
        for owner, subs in nested.get(option.name, [('', option.schema)]):
            for sub in subs:
                help_text = f'({owner}) {sub.help}' if owner else sub.help
                rows.append((f'{option.name}.{sub.name}', replace(sub, help=help_text)))
    return rows


def list_model_options(name: str, console: Console | None = None) -> dict[str, Any]:
    """Print every option of model `name` with its type, default and meaning.

    Returns ``{option: default}`` (nested options as ``'pooler_options.p'``). Raises UnknownModelError.
    """
    if CROSS_ENCODERS.is_named(name) and not REGISTRY.is_named(name):
        from .cross_encoders import COMMON_OPTIONS
        spec = CROSS_ENCODERS.get(name)
        rows, what = [(o.name, o) for o in (*spec.options, *COMMON_OPTIONS)], 'cross-encoder options'
    else:
        spec = REGISTRY.get(name)
        rows, what = option_rows(spec), 'model_options'
    table = Table(title=f'{what} of {spec.name}' + (f' (alias of {spec.alias_of})' if spec.alias_of else ''))
    table.add_column('option', no_wrap=True)
    table.add_column('type', no_wrap=True)
    table.add_column('default', overflow='fold')
    table.add_column('description', overflow='fold')
    for dotted, option in rows:
        table.add_row(*_cells(dotted, option.type, format_default(option.default), option.help))
    _console(console).print(table)
    return {dotted: option.default for dotted, option in rows}


def _plugin_rows(registry) -> list[dict[str, str]]:
    """One row per plugin of `registry` (those of other model types than backbones say which)."""
    suffix = '' if registry is REGISTRY else f' ({registry.kind}s)'
    counts: dict[str, int] = {}
    for spec in registry.specs():
        counts[spec.plugin] = counts.get(spec.plugin, 0) + 1
    rows = []
    for name, plugin in registry.plugins.items():
        prefixes = ', '.join(f'{p}:<name>' for p in plugin.prefixes)
        rows.append({'plugin': name + suffix, 'status': 'loaded', 'models': str(counts.get(name, 0)),
                     'detail': ' '.join(x for x in (prefixes, plugin.note) if x)})
    for failure in registry.failures:
        rows.append({'plugin': failure.name + suffix, 'status': 'failed', 'models': '0',
                     'detail': f'{failure.target}: {failure.error}'})
    return rows


def plugins_table(console: Console | None = None) -> list[dict[str, str]]:
    """Print every installed backbone plugin with its status; returns the rows."""
    rows = []
    for registry in REGISTRIES:
        rows += _plugin_rows(registry)
    table = Table(title='finetune backbone plugins')
    for column in ('plugin', 'status', 'models', 'detail'):
        table.add_column(column, overflow='fold')
    for row in rows:
        style = 'red' if row['status'] == 'failed' else None
        table.add_row(*_cells(*row.values()), style=style)
    _console(console).print(table)
    return rows
