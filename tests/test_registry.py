"""The registry: entry-point plugins, isolation of broken plugins, duplicates, look-ups with suggestions."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from rich.console import Console

import finetune
from finetune.errors import DuplicateNameError, PluginError, UnknownModelError
from finetune.registry import BackbonePlugin, BackboneSpec, Registry

THROWAWAY_MODULE = '''
import torch
from torch import nn
from finetune.backbone import Backbone, Features
from finetune.registry import BackbonePlugin, BackboneSpec


class TinyBackbone(Backbone):
    modality = 'image'
    layout = 'map'
    own_dim = 6
    pooled_dim = 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, batch):
        return Features(self.conv(batch))

    def pool_own(self, features):
        return features.tensor.mean(dim=(2, 3))

    def preprocess(self, items):
        return torch.stack([torch.as_tensor(i, dtype=torch.float32) for i in items])


def specs():
    return [BackboneSpec(name='throwaway-net', tasks=('image-to-image',), modality='image',
                         architecture='cnn', output_dim=6, description='a throw-away test plugin model',
                         build=lambda options: TinyBackbone())]


plugin = BackbonePlugin(name='throwaway', specs=specs)
'''


def install_plugin(root, dist: str, module: str, source: str, entry_name: str, target: str) -> None:
    """Write an importable module and a dist-info with a finetune.backbones entry point, as pip would."""
    (root / f'{module}.py').write_text(source)
    info = root / f'{dist}-0.1.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n')
    (info / 'entry_points.txt').write_text(f'[finetune.backbones]\n{entry_name} = {target}\n')


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    monkeypatch.undo()  # drop the throw-away dist-infos from sys.path before loading the real registry again
    for name in ('throwaway_plugin', 'broken_plugin', 'clashing_plugin'):
        sys.modules.pop(name, None)
    finetune.REGISTRY.reload()


def test_throwaway_plugin_is_listed_described_and_built(plugin_dir):
    install_plugin(plugin_dir, 'throwaway_plugin', 'throwaway_plugin', THROWAWAY_MODULE,
                   'throwaway', 'throwaway_plugin:plugin')
    finetune.REGISTRY.reload()
    assert 'throwaway-net' in finetune.list_models(task='image-to-image')
    assert finetune.get_spec('throwaway-net').plugin == 'throwaway'
    out = io.StringIO()
    finetune.describe_models('image-to-image', console=Console(file=out, width=250))
    assert 'throwaway-net' in out.getvalue() and 'a throw-away test plugin model' in out.getvalue()
    model = finetune.build_model('throwaway-net', {'pooler': 'GeM'})
    emb = model(torch.rand(2, 3, 8, 8))
    assert emb.shape == (2, 6)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    assert isinstance(model.encode([torch.rand(3, 8, 8)]), type(model.encode([torch.rand(3, 8, 8)])))


def test_broken_plugin_is_reported_and_others_keep_working(plugin_dir, monkeypatch):
    install_plugin(plugin_dir, 'broken_plugin', 'broken_plugin', 'raise ImportError("missing dependency xyz")\n',
                   'broken', 'broken_plugin:plugin')
    monkeypatch.delenv('FINETUNE_STRICT_PLUGINS', raising=False)
    with pytest.warns(RuntimeWarning, match="plugin 'broken'.*missing dependency xyz"):
        finetune.REGISTRY.reload()
    assert [f.name for f in finetune.REGISTRY.failures] == ['broken']
    assert 'fake-text' in finetune.list_models()  # the others still work
    out = io.StringIO()
    finetune.describe_models('image-to-image', console=Console(file=out, width=250))
    assert "plugin 'broken'" in out.getvalue() and 'missing dependency xyz' in out.getvalue()
    with pytest.raises(UnknownModelError, match='failed to load: broken'):
        finetune.get_spec('something-from-broken')


@pytest.mark.parametrize('raised', ['SystemExit(3)', 'KeyboardInterrupt()'])
def test_a_plugin_that_exits_or_interrupts_at_import_is_isolated(plugin_dir, monkeypatch, raised):
    install_plugin(plugin_dir, 'broken_plugin', 'broken_plugin', f'raise {raised}\n', 'broken',
                   'broken_plugin:plugin')
    monkeypatch.delenv('FINETUNE_STRICT_PLUGINS', raising=False)
    with pytest.warns(RuntimeWarning, match=f"plugin 'broken'.*{raised.split('(')[0]}"):
        finetune.REGISTRY.reload()
    assert [f.name for f in finetune.REGISTRY.failures] == ['broken']
    assert finetune.build_model('fake-image').output_dim == 16


def test_a_real_ctrl_c_while_plugins_load_still_interrupts(plugin_dir, monkeypatch):
    """The user's Ctrl-C (a SIGINT) is not a plugin failure: it goes on up."""
    source = 'import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(1)\n'
    install_plugin(plugin_dir, 'broken_plugin', 'broken_plugin', source, 'broken', 'broken_plugin:plugin')
    monkeypatch.delenv('FINETUNE_STRICT_PLUGINS', raising=False)
    with pytest.raises(KeyboardInterrupt):
        Registry().specs()


def test_strict_mode_raises_for_a_broken_plugin(plugin_dir, monkeypatch):
    install_plugin(plugin_dir, 'broken_plugin', 'broken_plugin', 'raise ImportError("missing dependency xyz")\n',
                   'broken', 'broken_plugin:plugin')
    monkeypatch.setenv('FINETUNE_STRICT_PLUGINS', '1')
    with pytest.raises(PluginError, match="'broken'.*missing dependency xyz"):
        Registry().specs()


def test_plugin_entry_point_must_give_a_plugin(plugin_dir, monkeypatch):
    install_plugin(plugin_dir, 'broken_plugin', 'broken_plugin', 'plugin = 42\n', 'broken', 'broken_plugin:plugin')
    monkeypatch.setenv('FINETUNE_STRICT_PLUGINS', '1')
    with pytest.raises(PluginError, match='expected a finetune.registry.BackbonePlugin'):
        Registry().specs()


def test_duplicate_name_from_an_entry_point_raises_naming_both_plugins(plugin_dir):
    source = THROWAWAY_MODULE.replace("name='throwaway-net'", "name='fake-image'").replace(
        "name='throwaway'", "name='clashing'")
    install_plugin(plugin_dir, 'clashing_plugin', 'clashing_plugin', source, 'clashing', 'clashing_plugin:plugin')
    with pytest.raises(DuplicateNameError, match="'fake-image'.*'clashing'.*'fake'|'fake-image'.*'fake'.*'clashing'"):
        Registry().specs()


def _spec(name):
    return BackboneSpec(name=name, tasks=('image-to-image',), modality='image', architecture='cnn',
                        output_dim=1, description='', build=lambda options: None)


def test_duplicate_name_between_two_plugins_raises_naming_both():
    registry = Registry(group='finetune.no-such-group')
    registry.add_plugin(BackbonePlugin('first', lambda: [_spec('net-a')]))
    with pytest.raises(DuplicateNameError, match="'net-a'.*'first' and 'second'"):
        registry.add_plugin(BackbonePlugin('second', lambda: [_spec('net-a')]))
    assert registry.names() == ['net-a']  # the failed plugin added nothing


def test_prefix_claimed_twice_raises():
    registry = Registry(group='finetune.no-such-group')
    registry.add_plugin(BackbonePlugin('first', lambda: [], prefixes=('zoo',), resolve=lambda p, r: _spec(r)))
    with pytest.raises(DuplicateNameError, match="'zoo:'.*'first' and 'second'"):
        registry.add_plugin(BackbonePlugin('second', lambda: [], prefixes=('zoo',)))
    assert registry.get('zoo:abc').name == 'abc'


def test_unknown_model_lists_closest_names():
    with pytest.raises(UnknownModelError) as err:
        finetune.build_model('fake-imag')
    message = str(err.value)
    assert "unknown model 'fake-imag'" in message and "'fake-image'" in message and 'fakefile:<name>' in message


def test_lookup_is_case_insensitive_for_exact_names():
    assert finetune.get_spec('Fake-Image').name == 'fake-image'


def test_list_models_wildcards_and_tasks():
    assert finetune.list_models('fake*') == ['fake-base', 'fake-clip', 'fake-image', 'fake-text']
    assert 'fake-image' in finetune.list_models(task='image-to-image')
    assert 'fake-image' not in finetune.list_models(task='text-to-text')
    with pytest.raises(UnknownModelError, match="unknown task 'image2image'.*image-to-image"):
        finetune.list_models(task='image2image')


def test_listing_imports_no_model_weights_and_is_quick():
    """A cold `list_models` / `describe_models` builds no model: no parameter is ever allocated."""
    code = textwrap.dedent('''
        import time, torch
        from torch import nn
        built = []
        original = nn.Module.register_parameter
        def spy(self, name, param):
            if param is not None and not param.is_meta:
                built.append(type(self).__name__)
            return original(self, name, param)
        nn.Module.register_parameter = spy
        import io, finetune
        from rich.console import Console
        t = time.perf_counter()
        finetune.describe_models(console=Console(file=io.StringIO()))
        print(len(finetune.list_models()), len(built), round(time.perf_counter() - t, 2))
    ''')
    env = dict(os.environ, FINETUNE_OFFLINE='1')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, check=True)
    count, allocated, _seconds = out.stdout.split()
    assert int(count) >= 85
    assert int(allocated) == 0


def test_first_load_from_many_threads_sees_every_plugin(monkeypatch):
    import threading
    import time

    from finetune import registry as registry_module
    reg = registry_module.Registry()
    real = registry_module.entry_points

    def slow_entry_points(**kwargs):  # widen the window in which a second thread could see half a registry
        time.sleep(0.2)
        return real(**kwargs)
    monkeypatch.setattr(registry_module, 'entry_points', slow_entry_points)
    seen = []

    def look():
        seen.append(len(reg.specs()))
    threads = [threading.Thread(target=look) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1 and seen[0] >= 90, seen
