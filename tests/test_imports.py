"""The house has no import circles: no two modules of finetune/ or plugins/ import each other, directly or
through others, counting every import (those inside functions too)."""
from __future__ import annotations

import ast
import os
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules() -> dict[str, str]:
    """Dotted module name -> file, for the finetune package and every plugin package."""
    packages = {'finetune': os.path.join(ROOT, 'finetune')}
    plugins = os.path.join(ROOT, 'plugins')
    packages.update({name: os.path.join(plugins, name) for name in os.listdir(plugins)
                     if os.path.isfile(os.path.join(plugins, name, '__init__.py'))})
    found = {}
    for package, folder in packages.items():
        for where, _, files in os.walk(folder):
            for file in files:
                if file.endswith('.py'):
                    relative = os.path.relpath(os.path.join(where, file[:-3]), os.path.dirname(folder))
                    name = relative.replace(os.sep, '.')
                    found[name[:-len('.__init__')] if name.endswith('.__init__') else name] = os.path.join(where, file)
    return found


def _imported(module: str, path: str, modules: dict[str, str]) -> set[str]:
    """The modules of `modules` that `module` imports anywhere in its file."""
    package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
    targets = set()
    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parent = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(parent + ([node.module] if node.module else []))
            names = [f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition('.')[0]
            if name and name != module:
                targets.add(name)
    return targets


def import_circles() -> list[list[str]]:
    """The strongly connected components of more than one module in the import graph (Tarjan's algorithm)."""
    modules = _modules()
    edges = defaultdict(set, {m: _imported(m, path, modules) for m, path in modules.items()})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))
    for module in sorted(modules):
        if module not in index:
            visit(module)
    return circles


def test_the_checker_finds_a_circle(tmp_path, monkeypatch):
    package = tmp_path / 'plugins' / 'circular_plugin'
    package.mkdir(parents=True)
    (package / '__init__.py').write_text('')
    (package / 'a.py').write_text('def f():\n    from .b import g\n')
    (package / 'b.py').write_text('from . import a\n')
    (tmp_path / 'finetune').mkdir()
    (tmp_path / 'finetune' / '__init__.py').write_text('')
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    assert import_circles() == [['circular_plugin.a', 'circular_plugin.b']]


def test_no_import_circles():
    assert import_circles() == []
