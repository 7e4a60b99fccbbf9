"""The one weight resolver (finetune/hub.py): sources as data, offline first, one message."""
from __future__ import annotations

import time

import pytest

import finetune.hub as hub
from finetune.errors import WeightsNotFoundError
from finetune.hub import LocalFile, PackageFile, UrlFile, find_weights


class Counted(hub.WeightSource):
    """A source whose download is counted (and faked)."""

    what, where, host = 'x.bin', '/nowhere', 'https://example.org/x.bin'

    def __init__(self, result=None, error=None):
        self.calls, self.result, self.error = 0, result, error

    def download(self):
        self.calls += 1
        if self.error:
            raise self.error
        return self.result


def test_the_first_local_copy_wins_before_any_download(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, 'host_reachable', lambda url, timeout=3.0: pytest.fail('no network needed'))
    shipped = tmp_path / 'shipped.bin'
    shipped.write_bytes(b'w')
    url_cache = tmp_path / 'cache'
    url_cache.mkdir()
    (url_cache / 'w.pth').write_bytes(b'w')
    sources = [LocalFile(str(tmp_path / 'missing.bin')), PackageFile('some-weights', lambda: None),
               UrlFile('https://example.org/files/w.pth', folder=str(url_cache)),
               PackageFile('other-weights', lambda: str(shipped))]
    assert find_weights('m', sources) == str(url_cache / 'w.pth')
    assert find_weights('m', [sources[0], sources[3]]) == str(shipped)


def test_downloads_are_tried_in_order_only_where_the_host_answers(monkeypatch):
    monkeypatch.delenv('FINETUNE_OFFLINE', raising=False)
    for name in hub.offline_envs():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub, 'host_reachable', lambda url, timeout=3.0: True)
    failing, working = Counted(error=OSError('reset')), Counted(result='/tmp/got.bin')
    assert find_weights('m', [failing, working]) == '/tmp/got.bin'
    assert failing.calls == working.calls == 1
    monkeypatch.setattr(hub, 'host_reachable', lambda url, timeout=3.0: False)
    unreachable = Counted(result='/tmp/never.bin')
    with pytest.raises(WeightsNotFoundError, match='example.org could not be reached within 3s'):
        find_weights('m', [unreachable])
    assert unreachable.calls == 0


def test_offline_the_one_message_names_every_place_and_the_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv('FINETUNE_OFFLINE', '1')
    source = Counted(result='/tmp/never.bin')
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as info:
        find_weights('my-model', [UrlFile('https://example.org/files/w.pth', folder=str(tmp_path)), source],
                     name_hint="'fam:my-model:/path/to/w.pth'", detail='fam, tag x')
    assert time.perf_counter() - start < 1 and source.calls == 0
    message = str(info.value)
    for part in ("pretrained weights for 'my-model' (fam, tag x) are not available: offline mode is set "
                 '(FINETUNE_OFFLINE)', 'looked for: w.pth (from https://example.org/files/w.pth)',
                 f'in:         {tmp_path}', 'looked for: x.bin', "model_options={'pretrained': '/path/to/w.pth'}",
                 "'fam:my-model:/path/to/w.pth'", "model_options={'pretrained': False}"):
        assert part in message, part


def test_a_cross_encoder_plugin_declares_offline_switches_too(monkeypatch):
    from finetune.registry import CROSS_ENCODERS, BackbonePlugin
    monkeypatch.setattr(CROSS_ENCODERS, '_plugins', dict(CROSS_ENCODERS.plugins))  # undone after the test
    CROSS_ENCODERS.add_plugin(BackbonePlugin(name='scorers-of-elsewhere', specs=list,
                                             offline_envs=('ELSEWHERE_OFFLINE',)))
    assert 'ELSEWHERE_OFFLINE' in hub.offline_envs()
    for name in hub.offline_envs():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('ELSEWHERE_OFFLINE', '1')
    assert hub.offline_requested() == 'offline mode is set (ELSEWHERE_OFFLINE)'
