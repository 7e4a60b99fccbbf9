"""describe_models / list_model_options / plugins tables, and the `finetune` command line."""
from __future__ import annotations

import io
import re

import pytest
from click.testing import CliRunner
from rich.console import Console

import finetune
from finetune.cli import main
from finetune.describe import plugins_table
from finetune.errors import UnknownModelError

WIDE = {'COLUMNS': '250'}


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=250), buffer


def _row(text: str, first_cell: str) -> list[str]:
    """The cells of the table row whose first cell is exactly `first_cell`, wrapped cells joined."""
    found: list[str] | None = None
    for line in text.splitlines():
        if not line.strip().startswith('│'):
            if found is not None:
                break
            continue
        cells = [c.strip() for c in line.strip().strip('│').split('│')]
        if found is None:
            if cells[0] == first_cell:
                found = cells
        elif cells[0] == '':  # a continuation line of the same row
            found = [f'{a} {b}'.strip() for a, b in zip(found, cells)]
        else:
            break
    if found is None:
        raise AssertionError(f'no row {first_cell!r} in:\n{text}')
    return found


def _squash(text: str) -> str:
    return re.sub(r'\s+', ' ', text)


# ---------------------------------------------------------------- describe_models

def test_describe_models_image_to_image_table():
    console, buffer = _console()
    shown = finetune.describe_models(task='image-to-image', console=console)
    text = buffer.getvalue()
    header = next(line for line in text.splitlines() if 'architecture' in line)
    columns = [c.strip() for c in header.strip().strip('┃').split('┃')]
    assert columns == ['name', 'task', 'output_dim', 'architecture', 'description']
    assert _row(text, 'fake-image')[1:4] == ['image-to-image', '16', 'cnn']
    names = [spec.name for spec in shown]
    assert 'fake-image' in names and 'fake-text' not in names
    assert all('image-to-image' in spec.tasks for spec in shown)
    assert names == sorted(names)


def test_describe_models_only_prints_the_asked_task():
    console, buffer = _console()
    finetune.describe_models(task='image-to-image', console=console)
    text = buffer.getvalue()
    assert 'finetune backbones: image-to-image' in text
    for other in ('text-to-text', 'text-to-image', 'mesh-to-mesh'):
        assert f'finetune backbones: {other}' not in text


def test_describe_models_unknown_task_names_valid_tasks():
    console, buffer = _console()
    with pytest.raises(UnknownModelError) as info:
        finetune.describe_models(task='image-to-imag', console=console)
    message = str(info.value)
    assert "'image-to-imag'" in message
    for task in finetune.TASKS:
        assert task in message
    assert "Did you mean 'image-to-image'" in message
    assert buffer.getvalue() == ''


# ---------------------------------------------------------------- list_model_options

def test_list_model_options_returns_defaults():
    console, buffer = _console()
    defaults = finetune.list_model_options('fake-image', console=console)
    assert isinstance(defaults, dict)
    assert defaults['pooler_options.p'] == 3.0
    assert defaults['pooler_options.eps'] == 1e-6
    assert defaults['pooler_options.learnable'] is True
    assert defaults['pretrained'] is False  # the family's default
    assert defaults['pooler'] is None
    assert defaults['normalize'] is True
    assert defaults['head_options.scale'] == 16.0
    assert defaults['preprocess_options.image_size'] == 16
    text = buffer.getvalue()
    assert 'model_options of fake-image' in text
    assert _row(text, 'pooler_options.p')[1:3] == ['float > 0', '3.0']
    assert _row(text, 'pretrained')[2] == 'False'


def test_list_model_options_alias_title():
    console, buffer = _console()
    finetune.list_model_options('fake-base', console=console)
    assert 'alias of fake-text' in buffer.getvalue()


def test_list_model_options_unknown_model():
    console, _ = _console()
    with pytest.raises(UnknownModelError) as info:
        finetune.list_model_options('fake-imagee', console=console)
    assert "Did you mean 'fake-image'" in str(info.value)


def test_plugins_table_lists_the_plugins():
    console, buffer = _console()
    rows = plugins_table(console=console)
    by_name = {row['plugin']: row for row in rows}
    assert by_name['fake']['status'] == 'loaded' and by_name['fake']['models'] == '4'
    assert 'fakefile:<name>' in by_name['fake']['detail']
    assert _row(buffer.getvalue(), 'fake')[1] == 'loaded'


# ---------------------------------------------------------------- command line

@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def test_cli_models_by_task(runner):
    result = runner.invoke(main, ['models', '--task', 'image-to-image'], env=WIDE)
    assert result.exit_code == 0, result.output
    assert 'finetune backbones: image-to-image' in result.output
    assert _row(result.output, 'fake-image')[2] == '16'


def test_cli_models_pattern_prints_names_only(runner):
    result = runner.invoke(main, ['models', 'fake*'])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines == finetune.list_models('fake*') == ['fake-base', 'fake-clip', 'fake-image', 'fake-text']
    assert '│' not in result.output and '┃' not in result.output


def test_cli_models_names_flag(runner):
    result = runner.invoke(main, ['models', '--names', '--task', 'image-to-image'])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == finetune.list_models(task='image-to-image')


def test_cli_models_bad_task_is_a_usage_error(runner):
    result = runner.invoke(main, ['models', '--task', 'image-to-imag'])
    assert result.exit_code == 2
    assert 'image-to-image' in result.output
    assert 'Traceback' not in result.output


def test_cli_options(runner):
    result = runner.invoke(main, ['options', 'fake-image'], env=WIDE)
    assert result.exit_code == 0, result.output
    assert 'model_options of fake-image' in result.output
    assert _row(result.output, 'pooler_options.p')[2] == '3.0'
    assert _row(result.output, 'output_dim')[2] == 'None'


def test_cli_plugins(runner):
    result = runner.invoke(main, ['plugins'], env=WIDE)
    assert result.exit_code == 0, result.output
    assert _row(result.output, 'fake')[1] == 'loaded'


@pytest.mark.parametrize('args, expected', [
    ([], ['models', 'options', 'plugins']),
    (['models'], ['--task', '--names', 'PATTERN', 'image-to-image']),
    (['options'], ['NAME', 'option']),
    (['plugins'], ['plugins']),
])
def test_cli_help(runner, args, expected):
    result = runner.invoke(main, [*args, '--help'])
    assert result.exit_code == 0, result.output
    assert result.output.startswith('Usage:')
    for word in expected:
        assert word in result.output
    short = runner.invoke(main, [*args, '-h'])
    assert short.exit_code == 0 and short.output == result.output


def test_cli_unknown_model_exits_2_with_a_hint(runner):
    result = runner.invoke(main, ['options', 'fake-imagee'])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    output = _squash(result.output)
    assert 'error:' in output
    assert "unknown model 'fake-imagee'" in output
    assert "Did you mean 'fake-image'" in output
    assert 'Traceback' not in result.output


def test_cli_a_model_folder_that_does_not_exist_is_named_not_an_unknown_model(runner, tmp_path):
    missing = str(tmp_path / 'out' / 'model')
    csv = tmp_path / 'pairs.csv'
    csv.write_text('query,doc\nwhat barks,a dog\nwhat meows,a cat\n')
    for args, what in ((['evaluate', '--model', missing, '--data', str(csv)], '--model'),
                       (['merge', './no-such-base', missing, '--alpha', '0.5', '--output', str(tmp_path / 'm')], 'BASE'),
                       (['merge', 'fake-text', '~/no-such-tuned', '--alpha', '0.5', '--output', str(tmp_path / 'm')],
                        'TUNED')):
        result = runner.invoke(main, args)
        output = _squash(result.output)
        assert result.exit_code == 2 and f'error: {what}: the folder' in output and 'does not exist' in output, output
        assert 'unknown model' not in output and 'Did you mean' not in output and 'Traceback' not in result.output
    from finetune.cli import _looks_like_path
    assert not _looks_like_path('hf:org/model') and not _looks_like_path('fake-text') and _looks_like_path('out/model')


def test_cli_models_pattern_without_match_prints_nothing(runner):
    result = runner.invoke(main, ['models', 'zzz_no_such_model*'])
    assert result.exit_code == 0
    assert result.output == ''


def test_cli_version(runner):
    result = runner.invoke(main, ['--version'])
    assert result.exit_code == 0
    assert finetune.__version__ in result.output


def test_option_types_and_errors_are_shown_literally_not_as_markup():
    console, buffer = _console()
    finetune.list_model_options('fake-image', console=console)
    assert _row(buffer.getvalue(), 'freeze')[1].startswith('bool | list[str]')  # rich read '[str]' as a style
