"""The ``finetune`` command line, over the same public API as the Python package."""
from __future__ import annotations

import sys

import click
from rich.console import Console

from .errors import FinetuneError
from .registry import TASKS


def _run(fn, *args, **kwargs):
    """Call `fn`; a FinetuneError becomes a one-paragraph message and exit status 2, not a traceback."""
    try:
        return fn(*args, **kwargs)
    except FinetuneError as exc:
        Console(stderr=True).print(f'[red]error:[/red] {exc}', highlight=False, markup=True)
        sys.exit(2)


@click.group(context_settings={'help_option_names': ['-h', '--help']})
@click.version_option(package_name='finetune')
def main() -> None:
    """finetune: turn a pretrained backbone into an embedding model and fine-tune it on your data."""


@main.command('models')
@click.option('--task', type=click.Choice(TASKS), default=None, help='Only backbones for this task.')
@click.option('--names', 'names_only', is_flag=True, help='Print bare names, one per line.')
@click.argument('pattern', required=False)
def models_command(task: str | None, names_only: bool, pattern: str | None) -> None:
    """List the backbones: a table per task, or names matching PATTERN (e.g. 'resnet*', 'timm:vit_*')."""
    from . import describe_models, list_models
    if pattern or names_only:
        for name in _run(list_models, pattern, task):
            click.echo(name)
        return
    _run(describe_models, task)


@main.command('options')
@click.argument('name')
def options_command(name: str) -> None:
    """Show every model option of backbone NAME with its default and meaning."""
    from . import list_model_options
    _run(list_model_options, name)


@main.command('plugins')
def plugins_command() -> None:
    """Show the installed backbone plugins, including any that failed to load."""
    from .describe import plugins_table
    _run(plugins_table)


if __name__ == '__main__':  # pragma: no cover
    main()
