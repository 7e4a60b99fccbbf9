"""The ``finetune`` command line, over the same public API as the Python package."""
from __future__ import annotations

import os
import sys

import click
from rich.console import Console
from rich.text import Text

from .cli_support import alpha_or_auto, named_values, parse_key_values, print_run_tables, sampling_value
from .errors import FinetuneError


def _fail(message: str, status: int = 2) -> None:
    """Print ``error: <message>`` to stderr, literally (brackets in paths are not markup), and exit."""
    Console(stderr=True, soft_wrap=True).print(Text.assemble(('error:', 'red'), ' ', message), highlight=False)
    sys.exit(status)


def _run(fn, *args, **kwargs):
    """Call `fn`; a FinetuneError (or a file that cannot be read or written) becomes a message and exit
    status 2, not a traceback; Ctrl-C exits with 130."""
    from .logs import to_stderr
    try:
        with to_stderr():
            return fn(*args, **kwargs)
    except FinetuneError as exc:
        _fail(str(exc))
    except OSError as exc:
        where = f': {exc.filename}' if getattr(exc, 'filename', None) else ''
        _fail(f'{exc.strerror or exc}{where}')
    except KeyboardInterrupt:
        _fail('interrupted', status=130)


@click.group(context_settings={'help_option_names': ['-h', '--help']})
@click.version_option(package_name='finetune')
def main() -> None:
    """finetune: turn a pretrained backbone into an embedding model and fine-tune it on your data."""


@main.command('models')
@click.option('--task', default=None, help='Only backbones for this task (text-to-text, image-to-image, ...).')
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


def _is_artifact(name_or_dir: str) -> bool:
    import os
    return os.path.isfile(os.path.join(name_or_dir, 'finetune_config.json'))


def _looks_like_path(name: str) -> bool:
    """Whether a model argument names a folder rather than a registered model: it starts with '.' or '~', or has a
    path separator outside a family prefix ('hf:org/model' is a name; 'C:\\models' is a path)."""
    prefix, colon, _ = name.partition(':')
    if colon and len(prefix) > 1 and not any(s and s in prefix for s in (os.sep, os.altsep)):
        return False
    return name.startswith(('.', '~')) or any(s and s in name for s in (os.sep, os.altsep))


def _load_model(name_or_dir: str, trust_remote_code: bool = False, model_options: dict | None = None,
                what: str = '--model'):
    """A saved model folder (loaded with the caller's trust_remote_code) or a backbone built by name. Raises
    InputError naming `what` for a path to a folder that does not exist."""
    from . import build_model, load
    from .errors import InputError, OptionError
    if _looks_like_path(name_or_dir) and not os.path.exists(os.path.expanduser(name_or_dir)):
        raise InputError(f'{what}: the folder {name_or_dir!r} does not exist; expected the folder of a saved model '
                         f'(what run.save() or fit(output_dir=...) wrote: <output_dir>/model).')
    name_or_dir = os.path.expanduser(name_or_dir)
    if _is_artifact(name_or_dir):
        if model_options:
            raise OptionError('--model-option cannot change a saved model; start from a backbone name.')
        return load(name_or_dir, trust_remote_code=trust_remote_code)
    options = dict(model_options or {})
    if trust_remote_code:
        if not _runs_code(name_or_dir):
            raise OptionError(f'--trust-remote-code: {name_or_dir!r} runs no code of its own; the flag is for '
                              f'models that ship their own (Hugging Face models with an auto_map).')
        options['trust_remote_code'] = True
    return build_model(name_or_dir, options or None)


def _runs_code(name: str) -> bool:
    """Whether the backbone `name` has a trust_remote_code option (a model that may ship its own code)."""
    from .model import option_schema
    from .registry import REGISTRY
    return any(o.name == 'trust_remote_code' for o in option_schema(REGISTRY.get(name)))


TRUST_HELP = ("Let a Hugging Face model run its own Python code (its auto_map). Off by default: a saved model's "
              'files never turn it on.')
#: finetune.compact.PRECISIONS, spelled here so that the command line starts without numpy and torch
PRECISION_CHOICES = ('float32', 'int8', 'uint8', 'binary', 'ubinary')


@main.command('fit')
@click.option('--model', 'model_name', default=None,
              help="Backbone name (see `finetune models`) or a saved model folder. Default: the model the registry "
                   "names for the data's task (see `finetune models --task TASK`).")
@click.option('--train-data', required=True, multiple=True,
              help='CSV file, or a folder with one sub-folder per class; several datasets: NAME=PATH, repeated.')
@click.option('--eval-data', multiple=True, help='Held-out data for metrics before and after training; it chooses '
                                                 'the epoch handed back (and WiSE-FT\'s alpha). NAME=PATH repeated: '
                                                 'one table each, chosen on their mean.')
@click.option('--test-data', multiple=True, help='Held-out data that chooses nothing: metrics before and after, the '
                                                 'gain to report (NAME=PATH repeated for several).')
@click.option('--dataset-sampling', default='proportional', show_default=True,
              help="Several training datasets: proportional, round_robin, or weights such as logs=2,scored=1.")
@click.option('--validation-split', default=0.1, show_default=True, type=float,
              help='Without --eval-data: the share of the training rows held out to choose the model (the default '
                   'applies from 100 held-out rows; 0: none).')
@click.option('--cpu-kernels', default='auto', show_default=True, type=click.Choice(['auto', 'on', 'off']),
              help="On a CPU: cheaper embedding gradients and 16-bit dropout masks (dropout draws another random "
                   "stream); auto: those faster at this thread count.")
@click.option('--loss', multiple=True, help='Loss name (default: chosen from the data kind); NAME=LOSS per dataset '
                                            '(repeatable).')
@click.option('--loss-option', multiple=True, help='KEY=VALUE for loss_options (repeatable).')
@click.option('--model-option', multiple=True, help='KEY=VALUE for model_options, e.g. pooler=GeM (repeatable).')
@click.option('--epochs', default=1, show_default=True, type=int)
@click.option('--batch-size', default=32, show_default=True, type=int)
@click.option('--learning-rate', default=None, type=float, help='Default: the model family\'s.')
@click.option('--precision', default='auto', show_default=True, type=click.Choice(['auto', 'bf16', 'fp16', 'fp32']))
@click.option('--device', default='auto', show_default=True)
@click.option('--num-workers', default=None, type=int, help='DataLoader worker processes (default: half the cores).')
@click.option('--seed', default=42, show_default=True, type=int)
@click.option('--metrics-log', default=None, help='Write step and evaluation metrics to this .csv/.jsonl file.')
@click.option('--output', default=None, help='Folder for the fine-tuned model and its checkpoints.')
@click.option('--overwrite-output-dir', is_flag=True,
              help="Remove another run's checkpoints from --output (otherwise such a folder is refused).")
@click.option('--save-steps', default=None, type=int, help='Also write a checkpoint every N optimizer steps.')
@click.option('--resume-from', default=None,
              help='A checkpoint folder, or an --output folder for its latest checkpoint: go on from there (options '
                   'left out take the checkpoint\'s values).')
@click.option('--guard-data', default=None,
              help='General-domain data whose quality should not be lost: evaluated before and after, and a model '
                   'chosen only if its guard metric stays within --guard-tolerance of the base\'s.')
@click.option('--select-best/--keep-last', default=True, show_default=True,
              help='With --eval-data: hand back the best evaluated model, the base included (or the last one).')
@click.option('--metric-for-best', default=None, help='The metric model selection maximizes (default per data '
                                                      'kind: map@10 labeled, ndcg@10 pairs, spearman scored).')
@click.option('--wise-ft', default=None, help="WiSE-FT: interpolate the base's and the fine-tuned weights, a number "
                                              "in [0, 1] or 'auto' (chosen on --eval-data).")
@click.option('--guard-tolerance', default=0.01, show_default=True, type=float,
              help='How much of the guard metric a chosen model may lose.')
@click.option('--group-by-length', default='auto', show_default=True, type=click.Choice(['auto', 'on', 'off']),
              help='Batch texts of similar length together (less padding); auto: on for text rows.')
@click.option('--report-to', multiple=True, help='Log the run to an experiment tracker: tensorboard, mlflow, '
                                             'trackio or wandb (repeatable, or comma-separated).')
@click.option('--trust-remote-code', is_flag=True, help=TRUST_HELP)
@click.pass_context
def fit_command(ctx, model_name, train_data, eval_data, loss, loss_option, model_option, metrics_log, resume_from,
                trust_remote_code, guard_data, test_data, **settings) -> None:
    """Fine-tune a backbone on your data; prints retrieval metrics before and after."""
    from .callbacks import MetricsLogger
    from .training import Default, SaveError, fit

    def job():
        callbacks = [MetricsLogger(metrics_log)] if metrics_log else None  # a bad path fails before any work
        given = {key: value for key, value in settings.items()
                 if ctx.get_parameter_source(key) is not click.core.ParameterSource.DEFAULT}
        for switch in ('group_by_length', 'cpu_kernels'):
            if switch in given:
                given[switch] = {'on': True, 'off': False}.get(given[switch], 'auto')
        if 'wise_ft' in given:
            given['wise_ft'] = alpha_or_auto(given['wise_ft'], '--wise-ft')
        if 'report_to' in given:
            given['report_to'] = [name for value in given['report_to'] for name in value.split(',') if name.strip()]
        if 'dataset_sampling' in given:
            given['dataset_sampling'] = sampling_value(given['dataset_sampling'])
        options = parse_key_values(loss_option, '--loss-option')
        if options:
            given['loss_options'] = options
        if loss:
            given['loss'] = named_values(loss, '--loss', paths=False)
        output = given.pop('output', None)
        evaluation, test = named_values(eval_data, '--eval-data'), named_values(test_data, '--test-data')
        model, data = _model_for_fit(model_name, named_values(train_data, '--train-data'), trust_remote_code,
                                     model_option, resume_from)
        if resume_from and trust_remote_code:  # the saved files never turn it on: only this flag
            given['model_options'] = {'trust_remote_code': True}
        try:
            run = fit(model, data, evaluation, output_dir=output if output else Default(None), callbacks=callbacks,
                      resume_from=resume_from if resume_from else Default(None), guard_data=guard_data,
                      test_data=test, **given)
        except SaveError as exc:  # the table of what was trained, then the error (exit status 2)
            print_run_tables(exc.run)
            raise
        print_run_tables(run)
        if run.config.get('output_dir'):
            click.echo(f'model saved to {run.config["output_dir"]}/model (load it with finetune.load)')
    _run(job)


def _model_for_fit(model_name, train_data, trust_remote_code: bool, model_option, resume_from):
    """(model, data) for `finetune fit`: the named or saved model, or, with no --model, the registry's default
    for the task of the data (which is then read once, here)."""
    from .data import load_data
    from .modalities import task_of
    from .registry import REGISTRY
    model_options = parse_key_values(model_option, '--model-option')
    if resume_from:
        return None, train_data
    if model_name is not None:
        return _load_model(model_name, trust_remote_code, model_options), train_data
    from .data.several import load_several
    data = load_several(train_data, 'train_data', load_data)
    task = task_of(data.modalities)
    model_name = REGISTRY.default_model(task)
    click.echo(f'model: {model_name} (the default for {task} data; choose another with --model)', err=True)
    return _load_model(model_name, trust_remote_code, model_options), data


@main.command('merge-adapter')
@click.argument('model_dir')
@click.option('--output', required=True, help='Folder for the plain model (the adapters folded into its weights).')
@click.option('--trust-remote-code', is_flag=True, help=TRUST_HELP)
def merge_adapter_command(model_dir, output, trust_remote_code) -> None:
    """Fold the LoRA adapters of the saved model MODEL_DIR into the weights they adapt and save a plain model
    (no adapters, no base to rebuild) to --output."""
    from .adapters import has_lora, merge_lora
    from .artifacts import check_replaceable, load, save_model

    def job():
        from .errors import ArtifactError, OptionError
        if not os.path.isdir(model_dir):
            raise ArtifactError(f'MODEL_DIR {model_dir!r} does not exist; expected the folder of a saved model '
                                f'(what run.save() or fit(output_dir=...) wrote: <output_dir>/model).')
        check_replaceable(output, '--output')
        model = load(model_dir, trust_remote_code=trust_remote_code)
        if not has_lora(model):
            raise OptionError(f'{model_dir!r} has no LoRA adapters to merge (it was not trained with '
                              f"model_options={{'lora': ...}}); it is a plain model already.")
        save_model(merge_lora(model), output)
        click.echo(f'adapters merged; the plain model is saved to {output} (load it with finetune.load)')
    _run(job)


@main.command('merge')
@click.argument('base')
@click.argument('tuned')
@click.option('--alpha', default='auto', show_default=True,
              help="0: the base's weights, 1: the fine-tuned ones, or 'auto': the best of 0, 0.25, 0.5, 0.75, 1 on "
                   '--eval-data (and --guard-data).')
@click.option('--output', required=True, help='Folder for the merged model.')
@click.option('--eval-data', default=None, help="Data that chooses alpha when --alpha is 'auto'.")
@click.option('--guard-data', default=None, help='General-domain data a chosen alpha must not lose (see fit).')
@click.option('--guard-tolerance', default=0.01, show_default=True, type=float)
@click.option('--trust-remote-code', is_flag=True, help=TRUST_HELP)
def merge_command(base, tuned, alpha, output, eval_data, guard_data, guard_tolerance, trust_remote_code) -> None:
    """WiSE-FT: merge a base model (a saved folder or a backbone name) and its fine-tuned version (a saved
    folder) into one whose weights lie between them."""
    from .merging import choose_alpha, merge

    def job():
        from .artifacts import check_replaceable, save_model
        check_replaceable(output, '--output')  # before any work: a folder that is not a saved model stays as it is
        base_model = _load_model(base, trust_remote_code, what='BASE')
        tuned_model = _load_model(tuned, trust_remote_code, what='TUNED')
        a = alpha_or_auto(alpha, '--alpha')
        if a == 'auto':
            a, table = choose_alpha(base_model, tuned_model, eval_data, guard_data, guard_tolerance)
            Console().print(table)
        merged = merge(base_model, tuned_model, a)
        save_model(merged, output, extra={'wise_ft': {'alpha': a}})
        click.echo(f'merged with alpha {a:g}, saved to {output} (load it with finetune.load)')
    _run(job)


@main.command('evaluate')
@click.option('--model', 'model_name', required=True, help='A saved model folder or a backbone name.')
@click.option('--data', required=True, help='CSV file or class folder to evaluate on.')
@click.option('--batch-size', default=64, show_default=True, type=int)
@click.option('--precision', default='float32', show_default=True, type=click.Choice(PRECISION_CHOICES),
              help='Search on compact codes (int8 / uint8: one byte per dimension; binary / ubinary: one bit), '
                   'shown beside float32.')
@click.option('--rescore', default=None, type=int,
              help='With --precision: rescore the best RESCORE x 10 documents of each query with the float query.')
@click.option('--trust-remote-code', is_flag=True, help=TRUST_HELP)
def evaluate_command(model_name: str, data: str, batch_size: int, precision: str, rescore: int | None,
                     trust_remote_code: bool) -> None:
    """Print retrieval metrics of a model on some data."""
    from .evaluation import Evaluation, format_metrics_table

    def job():
        evaluation = Evaluation(_load_model(model_name, trust_remote_code), data)
        if precision == 'float32' and rescore is None:
            Console().print(format_metrics_table(None, evaluation.run(batch_size)))
            return
        from .evaluation import DEFAULT_KS
        from .evaluation.compact import describe_search
        compact = evaluation.run(batch_size, precision=precision, rescore=rescore)  # refuses bad settings first
        title = describe_search(precision, rescore, max(DEFAULT_KS))  # e.g. 'binary codes, best 40 rescored'
        Console().print(format_metrics_table(evaluation.run(batch_size), compact, columns=('float32', precision),
                                             title=title))
    _run(job)


@main.command('encode')
@click.option('--model', 'model_name', required=True, help='A saved model folder or a backbone name.')
@click.option('--input', 'input_path', required=True,
              help='A text file (one item per line: texts or file paths) or a CSV / TSV (its item column: '
                   'the first not named label or score). Relative paths are read from the file\'s folder.')
@click.option('--output', required=True, help='Where to write the embeddings (.npy).')
@click.option('--batch-size', default=32, show_default=True, type=int)
@click.option('--precision', default='float32', show_default=True, type=click.Choice(PRECISION_CHOICES),
              help='int8 / uint8: one byte per dimension (ranges the saved model keeps, else this file\'s); binary / '
                   'ubinary: sign bits packed 8 dimensions to a byte.')
@click.option('--prompt', default=None,
              help="Text models: the name of one of the model's prompts (e.g. query) or a text of its own put before "
                   "each item ('Represent this: '); '' for none. Default: the model's default prompt, if any.")
@click.option('--trust-remote-code', is_flag=True, help=TRUST_HELP)
def encode_command(model_name: str, input_path: str, output: str, batch_size: int, precision: str,
                   trust_remote_code: bool, prompt: str | None = None) -> None:
    """Embed every line of a file and save the (N, D) array as .npy."""
    import numpy as np

    from .data.loading import read_items

    def job():
        from . import encode
        items = read_items(input_path)
        embeddings = encode(_load_model(model_name, trust_remote_code), items, batch_size=batch_size,
                            precision=precision, prompt=prompt)
        np.save(output, embeddings)
        size = f'size {embeddings.shape[1]}' if precision == 'float32' else f'{embeddings.shape[1]} bytes'
        click.echo(f'{embeddings.shape[0]} {"embeddings" if precision == "float32" else precision + " codes"} of '
                   f'{size} written to {output}')
    _run(job)


@main.command('synthesize')
@click.option('--queries', required=True, help='Unlabeled queries: a text file (one per line) or a CSV file (its text '
                                               'column).')
@click.option('--corpus', required=True, help='The documents: a text file (one per line) or a CSV file.')
@click.option('--output', required=True, help='The JSON-lines file the rows are written to as they are made.')
@click.option('--relation-miner', default=None, help='Embedding model that retrieves candidates (a name, a prefixed '
                                                     'name or a saved model folder). Default: the registry\'s for synthesis.')
@click.option('--cross-encoder', default=None, help='Cross-encoder that scores the pairs (see `finetune models --task '
                                                    'cross-encoding`). Default: the registry\'s.')
@click.option('--num-relations', default=3, show_default=True, type=int,
              help='Documents kept per query: one positive and NUM-1 hard negatives.')
@click.option('--num-candidates', default=None, type=int, help='Documents retrieved and scored per query (default: '
                                                               'twice --num-relations).')
@click.option('--duplicate-threshold', default=0.95, show_default=True, type=float,
              help='A candidate whose relation-miner cosine with the positive reaches this is a near-duplicate, '
                   'never a negative.')
@click.option('--negatives', default='hardest', show_default=True, type=click.Choice(['hardest', 'random']))
@click.option('--positive-aware', default=None, help="Negatives only below a share of the positive's score (0.95) "
                                                     'or below it by a margin (margin=0.1).')
@click.option('--seed', default=42, show_default=True, type=int)
@click.option('--miner-batch-size', default=64, show_default=True, type=int)
@click.option('--scorer-batch-size', default=32, show_default=True, type=int)
@click.option('--device', default='auto', show_default=True)
@click.option('--resume', is_flag=True, help='Skip the queries --output already holds and append the others.')
@click.option('--overwrite', is_flag=True, help='Start --output again if it exists.')
@click.option('--trust-remote-code', is_flag=True, help=TRUST_HELP)
def synthesize_command(queries, corpus, output, relation_miner, cross_encoder, trust_remote_code, **settings) -> None:
    """Make training data from unlabeled queries and a corpus: a relation miner retrieves candidates, a
    cross-encoder scores them; rows (query, positive, negative, margin) go to --output for `finetune fit`."""
    from .synthesis import SynthesisModels, synthesize
    rule = settings.get('positive_aware')
    if rule is not None:  # '0.95' (a share) or 'margin=0.1'; synthesize checks the value
        how, _, amount = rule.rpartition('=')
        settings['positive_aware'] = {how or 'share': _number_or_text(amount)}

    def job():
        miner = relation_miner  # a name the run records as it is, unless it must be built here
        if relation_miner and (_is_artifact(relation_miner) or trust_remote_code and _runs_code(relation_miner)):
            miner = _load_model(relation_miner, trust_remote_code)
        options = {'trust_remote_code': True} if trust_remote_code else {}
        models = SynthesisModels(relation_miner=miner, cross_encoder=cross_encoder, cross_encoder_options=options)
        data = synthesize(queries, corpus, models, output=output, **settings)
        click.echo(f'{len(data):,} rows for {len(set(data.a)):,} queries written to {output} (train on them with '
                   f'finetune fit --train-data {output})')
    _run(job)


def _number_or_text(text: str):
    try:
        return float(text)
    except ValueError:
        return text


@main.command('export')
@click.argument('model_dir')
@click.option('--format', 'format_', default='onnx', show_default=True,
              help='onnx, or a folder format a plugin adds; an unknown name lists the formats.')
@click.option('--quantize', default=None, help='int8: dynamic int8 quantization of the ONNX graphs.')
@click.option('--output', default=None, help='Folder for the export (default: beside MODEL_DIR, <MODEL_DIR>-onnx, ...).')
@click.option('--eval-data', default=None,
              help='Your held-out data: the parity check embeds a sample of it and compares retrieval metrics.')
@click.option('--dim', default=None, type=int,
              help='ONNX (and the folder formats that can cut embeddings): output the leading DIM dimensions of '
                   'each embedding, re-normalized (Matryoshka sizes).')
@click.option('--int8-min-cosine', default=None, type=float,
              help='With --quantize int8: the cosine to the torch model the fp32 fallback aims at (default 0.997; '
                   'down to 0.99, fewer layers stay fp32: faster, less exact, more often refused by the gate).')
@click.option('--trust-remote-code', is_flag=True, help=TRUST_HELP)
def export_command(model_dir, format_, quantize, output, eval_data, dim, int8_min_cosine, trust_remote_code) -> None:
    """Export a saved model (MODEL_DIR, written by fit) for deployment, after a parity check against it."""
    from .exporting import export

    def job():
        folder = export(model_dir, format=format_, output=output, quantize=quantize, eval_data=eval_data,
                        trust_remote_code=trust_remote_code, log=lambda line: click.echo(line), dim=dim,
                        int8_min_cosine=int8_min_cosine)
        click.echo(f'written to {folder}')
    _run(job)


@main.command('report')
@click.argument('run_dir')
@click.option('--output', default=None, help='The HTML file to write (default: RUN_DIR/report.html).')
def report_command(run_dir, output) -> None:
    """Write the report page of a run: a fit's output folder or a saved model folder (RUN_DIR)."""
    from .reporting import REPORT_PAGE, load_report_data, write_report

    def job():
        data = load_report_data(run_dir)
        click.echo(f'report written to {write_report(data, output or os.path.join(run_dir, REPORT_PAGE))}')
    _run(job)


if __name__ == '__main__':  # pragma: no cover
    main()
