"""Run reports (finetune/reporting): the page of a fit with eval data, rebuilt from saved files, its retrieval
examples and items by modality; experiment trackers written and read back; the page checked in headless
Chromium."""
from __future__ import annotations

import base64
import io
import json
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import finetune
import finetune.reporting
from finetune.cli import main as cli_main
from finetune.errors import OptionError
from finetune.reporting.items import show_item
from finetune.reporting.neighbours import RetrievalView, examples
from test_training import coloured_squares, nan_on_call, text_pairs

QUIET = dict(batch_size=8, num_workers=0, precision='fp32', seed=0, log=lambda m: None)
SECTIONS = ('overview', 'metrics', 'curves', 'examples', 'map', 'data', 'settings')


def images_of(html: str) -> list[Image.Image]:
    """Every embedded image of `html`, decoded (raises for one that does not decode)."""
    out = []
    for mime, data in re.findall(r'src="data:(image/[a-z]+);base64,([A-Za-z0-9+/=]+)"', html):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        assert image.width > 0 and image.height > 0
        out.append(image)
    return out


@pytest.fixture(scope='module')
def text_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp('run')
    run = finetune.fit('fake-text', text_pairs(), text_pairs(), epochs=3, learning_rate=1e-2, wise_ft='auto',
                       output_dir=str(folder), **QUIET)
    return run, folder


def test_a_fit_with_eval_data_writes_a_page_with_every_section(text_run):
    run, folder = text_run
    html = (folder / 'report.html').read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    assert 'src="http' not in html and '<script' not in html  # self-contained, no network
    figures = images_of(html)
    assert len(figures) >= 7  # loss, learning rate, metric, WiSE-FT, gradient norm, throughput, map
    assert 'alt="gradient norm"' in html
    assert 'WiSE-FT' in html and 'chosen' in html
    found = run.report_data['retrieval']['examples']
    assert found['improved'], 'training on the pairs improves some queries'
    first = found['improved'][0]
    assert first['rank_after'] < first['rank_before']
    assert any(n['hit'] for n in first['after']) and first['query_item']['text'] in html
    assert html.count('class="n hit"') >= len(found['improved'])
    after = run.metrics['after']['ndcg@10']
    assert f'{after:.4f}' in html


def test_the_report_rebuilds_from_the_saved_run_and_model(text_run, tmp_path):
    run, folder = text_run
    saved = json.loads((folder / 'model' / 'report.json').read_text())
    assert saved['metrics']['after'] == pytest.approx(run.metrics['after'])
    for source in (folder, folder / 'model'):
        target = tmp_path / f'{source.name}.html'
        result = CliRunner().invoke(cli_main, ['report', str(source), '--output', str(target)])
        assert result.exit_code == 0, result.output
        html = target.read_text()
        assert all(f'<section id="{s}">' in html for s in SECTIONS)
        assert len(images_of(html)) == len(images_of((folder / 'report.html').read_text()))
    path = run.report(str(tmp_path))
    assert path.endswith('report.html') and os.path.getsize(path) > 10_000


def test_the_model_card_shows_the_curves_and_the_metrics_as_images(text_run):
    _, folder = text_run
    card = (folder / 'model' / 'README.md').read_text()
    linked = re.findall(r'!\[[^\]]*\]\((figures/[^)]+\.png)\)', card)
    assert 'figures/metrics.png' in linked and 'figures/training_loss.png' in linked
    for name in linked:
        image = Image.open(folder / 'model' / name)
        image.load()
        assert image.width > 100 and image.height > 100


def test_report_of_a_model_folder_without_report_data_shows_its_metrics(tmp_path, text_run):
    run, _ = text_run
    from finetune.artifacts import save_model
    plain = save_model(run.model, str(tmp_path / 'plain'), metrics=run.metrics)
    result = CliRunner().invoke(cli_main, ['report', plain])
    assert result.exit_code == 0, result.output
    html = (tmp_path / 'plain' / 'report.html').read_text()
    assert f'{run.metrics["after"]["ndcg@10"]:.4f}' in html and 'No retrieval examples' in html
    bad = CliRunner().invoke(cli_main, ['report', str(tmp_path / 'nothing')])
    assert bad.exit_code != 0 and 'not a folder' in bad.output


def test_a_run_without_eval_data_reports_its_curves_and_settings(tmp_path):
    run = finetune.fit('fake-text', text_pairs(), epochs=1, output_dir=str(tmp_path / 'out'), **QUIET)
    assert not (tmp_path / 'out' / 'report.html').exists()  # written by fits with eval data
    html = open(run.report(str(tmp_path / 'page.html'))).read()
    assert 'No evaluation data' in html and 'alt="training loss"' in html and 'InfoNCE' in html
    images_of(html)


def test_labeled_images_show_as_thumbnails_coloured_by_label(tmp_path):
    data = coloured_squares(n_per_class=4, size=16)
    run = finetune.fit('fake-image', data, data, epochs=1, output_dir=str(tmp_path), **QUIET)
    html = (tmp_path / 'report.html').read_text()
    thumbs = re.findall(r'src="data:image/jpeg;base64,', html)
    assert thumbs, 'image items are drawn as thumbnails'
    images_of(html)
    legend = run.report_data['retrieval']['map']['legend']
    assert sorted(legend) == ['blue', 'green', 'red', 'yellow']


def test_text_image_examples_show_texts_and_thumbnails(tmp_path):
    rng = np.random.default_rng(0)
    colours = {'red': (220, 30, 30), 'green': (30, 200, 40), 'blue': (30, 40, 220)}
    rows = [(f'a {name} car, number {i}', np.clip(rng.normal(0, 20, (16, 16, 3)) + rgb, 0, 255).astype(np.uint8))
            for name, rgb in colours.items() for i in range(4)]
    run = finetune.fit('fake-clip', rows, rows, epochs=2, learning_rate=1e-2, **dict(QUIET, batch_size=6))
    html = finetune.reporting.build_report(run.report_data)
    entry = next(e for g in ('improved', 'worse') for e in run.report_data['retrieval']['examples'][g])
    assert entry['query_item']['text'].startswith('a ') and entry['query_item']['text'] in html
    assert all(n['item']['image'].startswith('data:image/jpeg') for n in entry['before'] + entry['after'])
    assert run.report_data['retrieval']['modalities'] == ['text', 'image']


def test_examples_rank_and_mark_hits_from_embeddings():
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(6, 8))
    queries_after = docs[:4] + 0.01 * rng.normal(size=(4, 8))  # after: each query next to its document
    queries_before = docs[[1, 2, 3, 0]]  # before: next to the wrong one
    view = RetrievalView(['q0', 'q1', 'q2', 'q3'], [f'd{i}' for i in range(6)], (queries_before, docs),
                         (queries_after, docs), [{0}, {1}, {2}, {3}], same_items=False)
    found = examples(view, count=2, k=3)
    assert found['better_share'] == 1.0 and found['worse_share'] == 0.0
    for entry in found['improved']:
        assert entry['rank_after'] == 1 and entry['after'][0]['hit'] and entry['after'][0]['doc'] == entry['query']
        assert not entry['before'][0]['hit']


def test_items_show_by_modality():
    assert show_item('a red dog', 'text') == {'text': 'a red dog'}
    cloud = show_item(np.random.default_rng(0).normal(size=(300, 3)))
    assert cloud['image'].startswith('data:image/png;base64,')
    picture = show_item(np.zeros((20, 30, 3), dtype=np.uint8), 'image')
    assert picture['image'].startswith('data:image/jpeg;base64,')
    gone = show_item('/no/such/file.png', 'image')
    assert 'not drawn' in gone['text'] and 'file.png' in gone['text']


# ---------------------------------------------------------------- trackers
def test_unknown_or_missing_tracker_is_a_clear_error(monkeypatch):
    with pytest.raises(OptionError, match="unknown tracker 'tensorbord'.*tensorboard"):
        finetune.fit('fake-text', text_pairs(), report_to=['tensorbord'], **QUIET)
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'wandb' else real(name, *a))
    with pytest.raises(OptionError, match=r'finetune\[wandb\]'):
        finetune.fit('fake-text', text_pairs(), report_to='wandb', **QUIET)


def test_tensorboard_and_mlflow_runs_read_back(tmp_path, monkeypatch):
    pytest.importorskip('tensorboard')
    pytest.importorskip('mlflow')
    monkeypatch.setenv('MLFLOW_TRACKING_URI', (tmp_path / 'mlruns').as_uri())
    monkeypatch.setenv('MLFLOW_ALLOW_FILE_STORE', 'true')  # mlflow-skinny has no database backend
    run = finetune.fit('fake-text', text_pairs(), text_pairs(), epochs=2, learning_rate=1e-2,
                       output_dir=str(tmp_path / 'out'), report_to=['tensorboard', 'mlflow'], **QUIET)
    steps = run.config['steps_per_epoch'] * 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    (board,) = (tmp_path / 'out' / 'runs').iterdir()
    events = EventAccumulator(str(board))
    events.Reload()
    scalars = events.Tags()['scalars']
    assert [e.step for e in events.Scalars('train/loss')] == list(range(1, steps + 1))
    losses = [h['loss'] for h in run.history if 'loss' in h]
    assert [e.value for e in events.Scalars('train/loss')] == pytest.approx(losses, rel=1e-5)
    assert 'train/learning_rate' in scalars and 'eval/ndcg_at_10' in scalars
    norms = [h['grad_norm'] for h in run.history if 'loss' in h]
    assert [e.value for e in events.Scalars('train/grad_norm')] == pytest.approx(norms, rel=1e-5)
    assert events.Scalars('after/ndcg_at_10')[0].value == pytest.approx(run.metrics['after']['ndcg@10'], rel=1e-5)
    import mlflow
    client = mlflow.tracking.MlflowClient()
    (found,) = client.search_runs([client.get_experiment_by_name('finetune').experiment_id])
    assert found.data.params['loss'] == 'InfoNCE' and found.data.params['epochs'] == '2'
    history = client.get_metric_history(found.info.run_id, 'train/loss')
    assert sorted(m.step for m in history) == list(range(1, steps + 1))
    assert found.data.metrics['before/ndcg_at_10'] == pytest.approx(run.metrics['before']['ndcg@10'])


def test_a_failed_fit_closes_its_tracker_runs(tmp_path, monkeypatch):
    """A fit that stops on a NaN ends its MLflow run: the next fit in the process starts a run of its own (an open
    run would have been its parent, or refused it)."""
    pytest.importorskip('mlflow')
    import mlflow
    from finetune.training import TrainingError
    monkeypatch.setenv('MLFLOW_TRACKING_URI', (tmp_path / 'mlruns').as_uri())
    monkeypatch.setenv('MLFLOW_ALLOW_FILE_STORE', 'true')
    nan_on_call(monkeypatch, 3)
    with pytest.raises(TrainingError, match='NaN'):
        finetune.fit('fake-text', text_pairs(), epochs=1, report_to='mlflow', **QUIET)
    assert mlflow.active_run() is None
    finetune.fit('fake-text', text_pairs(), epochs=1, report_to='mlflow', **QUIET)
    assert mlflow.active_run() is None
    client = mlflow.tracking.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name('finetune').experiment_id])
    assert len(runs) == 2 and all(r.info.status == 'FINISHED' for r in runs)
    assert not any('mlflow.parentRunId' in r.data.tags for r in runs)
    failed = min(runs, key=lambda r: r.info.start_time)
    assert sorted(m.step for m in client.get_metric_history(failed.info.run_id, 'train/loss')) == [1, 2]


def test_every_tracker_is_closed_even_when_logging_or_another_close_fails():
    from types import SimpleNamespace

    from finetune.reporting.trackers import Trackers
    finished = []

    class Fake:
        def __init__(self, name, breaks_log=False, breaks_finish=False):
            self.name, self.breaks_log, self.breaks_finish, self.logged = name, breaks_log, breaks_finish, []

        def log(self, values, step):
            if self.breaks_log:
                raise OSError('disk full')
            self.logged.append((step, values))

        def finish(self):
            finished.append(self.name)
            if self.breaks_finish:
                raise OSError('server gone')
    trackers = Trackers(None)
    trackers.trackers = [Fake('a', breaks_log=True), Fake('b', breaks_finish=True), Fake('c')]
    state = SimpleNamespace(step=2, history=[{'step': 1, 'loss': 0.5, 'grad_norm': float('inf')}])
    with pytest.raises(OSError, match='disk full'):
        trackers.on_fit_failed(state, RuntimeError('the fit broke'))
    assert finished == ['a', 'b', 'c'] and trackers.trackers == []
    healthy = Fake('d')
    trackers.trackers, trackers.loss_logged = [healthy], 0
    trackers.on_fit_failed(state, RuntimeError('again'))
    assert healthy.logged == [(1, {'train/loss': 0.5})]  # an infinite norm (fp16 overflow) is not logged


# ---------------------------------------------------------------- in a browser
def test_the_report_opens_in_headless_chromium_with_every_image_decoded(text_run, tmp_path):
    from browser_check import check_page, find_browser
    if find_browser() is None:
        pytest.skip('no Chromium on PATH (apt-get install chromium): the page is not checked in a browser here')
    run, folder = text_run
    page = folder / 'report.html'
    seen = check_page(str(page), str(tmp_path / 'shot.png'))
    assert seen['images'] == len(images_of(page.read_text())) >= 6
    assert seen['broken'] == [] and seen['console_errors'] == []
    shot = Image.open(tmp_path / 'shot.png')
    assert shot.width == 1280 and shot.height == seen['height'] > 2000  # the whole page, not one screen
    assert len(np.unique(np.asarray(shot.convert('L').resize((64, 256))))) > 20  # drawn, not blank


def test_the_browser_check_sees_a_broken_image_and_a_console_error(tmp_path):
    from browser_check import check_page, find_browser
    if find_browser() is None:
        pytest.skip('no Chromium on PATH (apt-get install chromium): the page is not checked in a browser here')
    page = tmp_path / 'bad.html'
    page.write_text('<html><body><img alt="gone" src="data:image/png;base64,AAAA">'
                    '<script>console.error("boom")</script></body></html>')
    seen = check_page(str(page))
    assert len(seen['broken']) == 1 and 'gone' in seen['broken'][0]
    assert any('boom' in e for e in seen['console_errors'])


def test_cli_report_to_names_the_missing_extra(tmp_path, monkeypatch):
    data = tmp_path / 'pairs.csv'
    data.write_text('query,doc\n' + ''.join(f'{q},{d}\n' for q, d in text_pairs()))
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'trackio' else real(name, *a))
    result = CliRunner().invoke(cli_main, ['fit', '--model', 'fake-text', '--train-data', str(data),
                                           '--report-to', 'tensorboard,trackio'])
    assert result.exit_code == 2 and 'finetune[trackio]' in result.output


def test_the_table_has_guard_test_and_size_rows():
    from finetune.reporting.page import metrics_section
    html = metrics_section({'before': {'ndcg@10': 0.5, 'num_queries': 9}, 'after': {'ndcg@10': 0.75, 'num_queries': 9},
                            'guard': {'before': {'ndcg@10': 0.9}, 'after': {'ndcg@10': 0.85}},
                            'test': {'before': {'ndcg@10': 0.4}, 'after': {'ndcg@10': 0.45}},
                            'dims': {'64': {'before': {'ndcg@10': 0.3}, 'after': {'ndcg@10': 0.6}}}})
    assert '<td class="up">+0.2500</td>' in html and '<td class="down">-0.0500</td>' in html
    for row in ('guard ndcg@10', 'test ndcg@10', '@64 ndcg@10', 'at 64 dimensions', '9 queries'):
        assert row in html
    assert 'num_queries' not in html
