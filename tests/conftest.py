"""The fake model family the core's tests run on (tests/fake_plugin.py), registered through an entry point as a
third-party plugin would be, for this process and the processes the tests start. The families' own fixtures
are in families/conftest.py."""
from __future__ import annotations

import os
import sys
import tempfile

TESTS = os.path.dirname(os.path.abspath(__file__))


def _register_fake_plugin() -> None:
    """A dist-info declaring ``fake = fake_plugin:plugin`` in the entry-point group, on this process's path and
    on the path of the processes the tests start."""
    root = tempfile.mkdtemp(prefix='finetune-fake-plugin-')
    info = os.path.join(root, 'finetune_fake_plugin-0.1.dist-info')
    os.makedirs(info)
    with open(os.path.join(info, 'METADATA'), 'w') as f:
        f.write('Metadata-Version: 2.1\nName: finetune-fake-plugin\nVersion: 0.1\n')
    with open(os.path.join(info, 'entry_points.txt'), 'w') as f:
        f.write('[finetune.backbones]\nfake = fake_plugin:plugin\n'
                '[finetune.cross_encoders]\nfake = fake_plugin:cross_encoder_plugin\n')
    for path in (TESTS, root):
        if path not in sys.path:
            sys.path.insert(0, path)
    os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, (TESTS, root, os.environ.get('PYTHONPATH'))))
    from finetune.registry import REGISTRIES
    for registry in REGISTRIES:
        registry.reload()


_register_fake_plugin()
