"""Saved models (finetune/artifacts.py): nothing in an artifact leads the loader outside its folder, a damaged
artifact is answered with the file and the field, writes are atomic. On the fake family of the tests; the
Hugging Face family's own risks (code shipped in a model folder) are tested with it (families/)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import finetune
from finetune.errors import ArtifactError, FinetuneError

TEXTS = ['the red dog', 'a happy cat', 'the big house']


@pytest.fixture
def source(tmp_path):
    """A folder the 'fakefile:' family builds from, as a Hugging Face model folder is for 'hf:'."""
    folder = tmp_path / 'source'
    folder.mkdir()
    (folder / 'fake.json').write_text(json.dumps({'dim': 24}))
    return folder


@pytest.fixture
def artifact(source, tmp_path):
    model = finetune.build_model(f'fakefile:{source}')
    path = tmp_path / 'artifact'
    finetune.save_model(model, str(path))
    return path, model


def _edit_config(path, **changes) -> dict:
    config_path = path / 'finetune_config.json'
    config = json.loads(config_path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    config_path.write_text(json.dumps(config))
    return config


def test_an_artifact_rebuilds_from_its_own_folder(artifact, source):
    path, model = artifact
    assert json.loads((path / 'finetune_config.json').read_text())['name'] == 'fakefile:./backbone'
    (source / 'fake.json').unlink()  # the folder it was built from is not needed
    np.testing.assert_array_equal(finetune.load(str(path)).encode(TEXTS), model.encode(TEXTS))


@pytest.mark.parametrize('name', ['fakefile:{outside}', 'fakefile:./../outside', 'fakefile:./backbone/../../outside',
                                  '{outside}', 'fakefile:org/model', 'not-a-registered-model', 'fakefile:~/model',
                                  'fakefile:outside', 'nosuchprefix:./backbone'])
def test_a_name_that_leaves_the_artifact_is_refused(artifact, source, tmp_path, name, monkeypatch):
    path, _ = artifact
    outside = tmp_path / 'outside'
    outside.symlink_to(source)  # a real model there: refusing must not depend on it failing to load
    monkeypatch.chdir(tmp_path)  # 'fakefile:outside' would be read relative to the working folder
    _edit_config(path, name=name.format(outside=outside))
    with pytest.raises(ArtifactError, match=r"finetune_config.json, field 'name'") as info:
        finetune.load(str(path))
    assert any(w in str(info.value) for w in ('outside', 'neither a registered', 'path', 'no installed plugin'))


def test_a_registered_name_is_fine(artifact):
    path, _ = artifact
    _edit_config(path, name='fake-text', model_options=dict(json.loads(
        (path / 'finetune_config.json').read_text())['model_options'], dim=24))
    assert finetune.load(str(path)).output_dim == 24


def test_a_symlink_inside_the_artifact_that_points_out_is_refused(artifact, source):
    path, _ = artifact
    (path / 'elsewhere').symlink_to(source)
    _edit_config(path, name='fakefile:./elsewhere')
    with pytest.raises(ArtifactError, match='outside the artifact folder'):
        finetune.load(str(path))


def test_a_link_inside_backbone_that_points_out_is_refused(artifact, source):
    path, _ = artifact
    config = path / 'backbone' / 'fake.json'
    config.unlink()
    config.symlink_to(source / 'fake.json')
    with pytest.raises(ArtifactError, match='is a link to .*outside the artifact folder'):
        finetune.load(str(path))


def test_a_damaged_config_names_the_file_and_the_field(artifact):
    path, _ = artifact
    config_path = path / 'finetune_config.json'
    good = config_path.read_text()
    cases = [(good[:-20], r'finetune_config.json: not valid JSON'),
             (dict(name=None), r"field 'name' is missing"),
             (dict(model_options=['not', 'a', 'dict']), r"field 'model_options': expected a JSON object"),
             (dict(name=42), r"field 'name': expected the registry name"),
             (dict(model_options=dict(json.loads(good)['model_options'], pooler='nope')),
              r"field 'model_options'.*nope"),
             ('[1, 2]', 'expected a JSON object'),
             (dict(format=99), r"field 'format': 99 is not a format this version reads")]
    for change, message in cases:
        config_path.write_text(good)
        if isinstance(change, str):
            config_path.write_text(change)
        else:
            _edit_config(path, **change)
        with pytest.raises(ArtifactError, match=message):
            finetune.load(str(path))


def test_the_cli_answers_a_damaged_artifact_in_one_message(artifact, tmp_path):
    path, _ = artifact
    (path / 'finetune_config.json').write_text('{"name": ')
    items = tmp_path / 'items.txt'
    items.write_text('the dog\n')
    done = subprocess.run([sys.executable, '-m', 'finetune.cli', 'encode', '--model', str(path), '--input',
                           str(items), '--output', str(tmp_path / 'e.npy')], capture_output=True, text=True)
    assert done.returncode == 2
    assert 'Traceback' not in done.stderr and 'not valid JSON' in done.stderr
    assert done.stderr.startswith('error: ')


def test_errors_are_finetune_errors_not_json_or_key_errors(artifact):
    path, _ = artifact
    (path / 'finetune_config.json').write_text('{')
    with pytest.raises(FinetuneError) as info:
        finetune.load(str(path))
    assert type(info.value).__name__ == 'ArtifactError'


def test_an_incomplete_artifact_is_an_artifact_error(artifact):
    import shutil
    path, _ = artifact
    shutil.rmtree(path / 'backbone')
    with pytest.raises(ArtifactError, match="'./backbone' is missing from the artifact folder"):
        finetune.load(str(path))


def test_a_model_whose_name_could_not_be_loaded_again_is_not_saved(source, tmp_path, monkeypatch):
    model = finetune.build_model(f'fakefile:{source}')
    model.backbone.from_folder = False  # as a family that writes nothing into the artifact
    with pytest.raises(ArtifactError, match='cannot save .*outside the artifact'):
        finetune.save_model(model, str(tmp_path / 'nope'))
    assert not (tmp_path / 'nope').exists()


def test_a_kill_between_the_renames_of_a_replacement_leaves_a_loadable_model(artifact):
    """save_model replaces an artifact by two renames; between them only '<dir>.old' exists."""
    path, model = artifact
    os.replace(path, str(path) + '.old')
    loaded = finetune.load(str(path))
    np.testing.assert_allclose(loaded.encode(TEXTS), model.encode(TEXTS), atol=1e-6)
    finetune.save_model(model, str(path))  # the next save puts the folder back and drops the copy
    assert path.is_dir() and not os.path.exists(str(path) + '.old')


def _aged(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_temporary_folders_of_a_killed_write_are_judged_by_lock_and_age(artifact, tmp_path):
    """A killed write leaves '.finetune-<pid>-<id>' and its unlocked lock file: removed once a minute old,
    whatever the process id in its name (a reused id, even this process's, decides nothing). A temporary whose
    lock a live process holds is kept however old; one without a lock file (an older version's) after an hour."""
    from finetune.artifacts import LOCK_SUFFIX
    path, model = artifact

    def temporary(name: str, age: float, lock: bool = True):
        folder = tmp_path / name
        folder.mkdir()
        (folder / 'model.safetensors').write_bytes(b'half')
        if lock:
            (tmp_path / (name + LOCK_SUFFIX)).write_text('{"pid": 1}')
            _aged(tmp_path / (name + LOCK_SUFFIX), age)
        _aged(folder, age)
        return folder
    killed = temporary(f'.finetune-{os.getpid()}-abc', 120)  # this very process id, but nobody holds the lock
    young = temporary('.finetune-1-young', 5)  # its writer may be taking the lock this instant
    held = temporary('.finetune-999999-held', 7200)  # a dead-looking id, but the lock is held: still written
    holder = subprocess.Popen([sys.executable, '-c', textwrap.dedent(f"""
        import sys, time
        from finetune.files import FileLock
        FileLock({str(held) + LOCK_SUFFIX!r}).acquire()
        print('locked', flush=True)
        time.sleep(60)""")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        _aged(str(held) + LOCK_SUFFIX, 7200)
        old_unlocked = temporary('.finetune-2-oldversion', 7200, lock=False)
        new_unlocked = temporary('.finetune-3-recent', 600, lock=False)
        finetune.save_model(model, str(tmp_path / 'again'))
        assert not killed.exists() and not os.path.exists(str(killed) + LOCK_SUFFIX)
        assert not old_unlocked.exists()
        assert young.exists() and held.exists() and new_unlocked.exists()
    finally:
        holder.kill()
        holder.wait()
    # once the holder is gone its temporary is stale too
    finetune.save_model(model, str(tmp_path / 'again'))
    assert not held.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('.finetune-')) == [
        '.finetune-1-young', '.finetune-1-young' + LOCK_SUFFIX, '.finetune-3-recent']


def test_a_save_syncs_every_file_and_folder_before_the_rename(artifact, tmp_path, monkeypatch):
    path, model = artifact
    synced, renames = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.readlink(f'/proc/self/fd/{fd}'))
        return real_fsync(fd)

    def replace(src, dst):
        renames.append((src, dst, list(synced)))
        return real_replace(src, dst)
    monkeypatch.setattr(os, 'fsync', fsync)
    monkeypatch.setattr(os, 'replace', replace)
    target = tmp_path / 'synced'
    finetune.save_model(model, str(target))
    (src, dst, before), = renames
    assert dst == str(target)
    files = {name for name in os.listdir(target)}
    assert {'model.safetensors', 'finetune_config.json'} <= files
    assert all(os.path.join(src, name) in before for name in files if os.path.isfile(target / name))
    assert src in before  # the folder's own entries
    assert str(tmp_path) in synced[len(before):]  # and the parent after the rename


@pytest.mark.parametrize('content', ['file', 'folder', 'old'])
def test_saving_over_something_that_is_not_an_artifact_is_refused(artifact, tmp_path, content):
    path, model = artifact
    target = tmp_path / 'mine'
    if content == 'file':
        target.write_text('my notes')
    elif content == 'folder':
        target.mkdir()
        (target / 'thesis.tex').write_text('years of work')
    else:  # '<dir>.old' is where a replacement keeps the earlier folder: a user's folder of that name stays too
        target.mkdir()
        (tmp_path / 'mine.old').mkdir()
        (tmp_path / 'mine.old' / 'photo.jpg').write_bytes(b'jpeg')
    with pytest.raises(ArtifactError, match='not a saved finetune model|is a file'):
        finetune.save_model(model, str(target))
    if content == 'file':
        assert target.read_text() == 'my notes'
    elif content == 'folder':
        assert os.listdir(target) == ['thesis.tex']
    else:
        assert os.listdir(tmp_path / 'mine.old') == ['photo.jpg']
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.finetune-')]


def test_an_empty_folder_and_an_earlier_artifact_are_replaced(artifact, tmp_path):
    path, model = artifact
    (tmp_path / 'empty').mkdir()
    finetune.save_model(model, str(tmp_path / 'empty'))
    finetune.save_model(model, str(path))  # an earlier artifact
    assert finetune.load(str(tmp_path / 'empty')).output_dim == model.output_dim


def test_run_save_and_the_cli_merge_refuse_a_folder_that_is_not_an_artifact(artifact, tmp_path):
    from click.testing import CliRunner

    from finetune.cli import main
    from finetune.training import Run
    path, model = artifact
    target = tmp_path / 'docs'
    target.mkdir()
    (target / 'keep.txt').write_text('mine')
    run = Run(model, {}, [], 'rows', {})
    with pytest.raises(ArtifactError, match='not a saved finetune model'):
        run.save(str(target))
    result = CliRunner().invoke(main, ['merge', str(path), str(path), '--alpha', '0.5', '--output', str(target)])
    assert result.exit_code == 2 and 'not a saved finetune model' in result.output
    assert os.listdir(target) == ['keep.txt']
