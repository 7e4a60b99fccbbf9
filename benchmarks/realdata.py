"""Real data for the benchmarks, offline once fetched: Debian's `wordnet-base` (WordNet 3.0) and
`dataset-fashion-mnist` (Zalando's Fashion-MNIST), unpacked with `apt-get download` + `dpkg -x` into a cache
folder; and generated meshes of primitive shapes (trimesh).

    python benchmarks/realdata.py --fetch   # download and unpack both packages into the cache
"""
from __future__ import annotations

import argparse
import glob
import gzip
import os
import random
import subprocess
import tempfile

import numpy as np

CACHE = os.environ.get('FINETUNE_BENCH_DATA', os.path.expanduser('~/.cache/finetune-bench'))
PACKAGES = {'wordnet': ('wordnet-base', 'usr/share/wordnet'),
            'fashion-mnist': ('dataset-fashion-mnist', 'usr/share/datasets/fashion-mnist')}
FASHION_CLASSES = ('T-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag',
                   'ankle boot')
SHAPES = ('sphere', 'box', 'cylinder', 'torus', 'cone', 'capsule', 'icosahedron', 'annulus')


def cpu_name() -> str:
    """The CPU's model name, from /proc/cpuinfo (what every benchmark prints beside its figures)."""
    with open('/proc/cpuinfo') as f:
        return next((x.split(':', 1)[1].strip() for x in f if x.startswith('model name')), 'unknown')


def fetch(name: str) -> str:
    """The unpacked folder of package `name` ('wordnet' or 'fashion-mnist') in the cache, downloading it
    with apt-get (a package registry) when it is not there yet."""
    package, inside = PACKAGES[name]
    folder = os.path.join(CACHE, inside)
    if os.path.isdir(folder):
        return folder
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(['apt-get', 'download', package], cwd=tmp, check=True, capture_output=True)
        deb = glob.glob(os.path.join(tmp, '*.deb'))[0]
        subprocess.run(['dpkg', '-x', deb, CACHE], check=True)
    return folder


def wordnet_lexname_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(definition, lexicographer file) of `n` WordNet noun synsets, e.g. ('a domesticated carnivorous
    mammal ...', 'noun.animal'): labeled text data of 25 classes."""
    path = os.path.join(fetch('wordnet'), 'data.noun')
    names = ('noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition '
             'noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive '
             'noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity '
             'noun.relation noun.shape noun.state noun.substance noun.time').split()
    rows = [(definition, names[int(fields[1]) - 3]) for fields, definition in wordnet_synsets(path)
            if 25 <= len(definition) <= 160]
    random.Random(seed).shuffle(rows)
    return rows[:n]


def wordnet_synsets(path: str):
    """(the fields before the gloss, the first sentence of the gloss) of each synset of a WordNet data file: fields[1]
    is the lexicographer file number, fields[4] the first lemma."""
    with open(path, encoding='utf-8') as f:
        for line in f:
            if line.startswith('  '):
                continue  # the licence header
            head, _, gloss = line.partition(' | ')
            yield head.split(), gloss.split(';')[0].strip()


def _idx(path: str) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist(n_per_class: int, classes=range(10), split: str = 'train', offset: int = 0):
    """`n_per_class` (28x28 uint8 image, class name) rows of each of `classes`, from `offset` on."""
    folder = fetch('fashion-mnist')
    prefix = 'train' if split == 'train' else 't10k'
    images = _idx(os.path.join(folder, f'{prefix}-images-idx3-ubyte.gz'))
    labels = _idx(os.path.join(folder, f'{prefix}-labels-idx1-ubyte.gz'))
    rows = []
    for c in classes:
        where = np.flatnonzero(labels == c)[offset:offset + n_per_class]
        rows += [(images[i], FASHION_CLASSES[c]) for i in where]
    return rows


def shape_mesh(kind: str, rng: np.random.Generator):
    """A random instance of primitive shape `kind` (size and proportions vary)."""
    import trimesh
    s = rng.uniform(0.6, 1.4, 3)
    if kind == 'sphere':
        mesh = trimesh.creation.icosphere(subdivisions=2)
    elif kind == 'box':
        mesh = trimesh.creation.box(extents=s)
    elif kind == 'cylinder':
        mesh = trimesh.creation.cylinder(radius=0.5 * s[0], height=2 * s[1])
    elif kind == 'torus':
        mesh = trimesh.creation.torus(1.0, 0.2 + 0.2 * s[0])
    elif kind == 'cone':
        mesh = trimesh.creation.cone(radius=0.6 * s[0], height=2 * s[1])
    elif kind == 'capsule':
        mesh = trimesh.creation.capsule(height=1.5 * s[0], radius=0.4 * s[1])
    elif kind == 'icosahedron':
        mesh = trimesh.creation.icosahedron()
    else:
        mesh = trimesh.creation.annulus(r_min=0.5 * s[0], r_max=0.5 * s[0] + 0.4, height=0.5 * s[1])
    if kind in ('sphere', 'icosahedron'):
        mesh.apply_scale(s)
    return mesh


def shapes(kinds, n_per_kind: int, seed: int = 0) -> list:
    """`n_per_kind` random (mesh, kind) rows of each of `kinds`."""
    rng = np.random.default_rng(seed)
    return [(shape_mesh(kind, rng), kind) for kind in kinds for _ in range(n_per_kind)]


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--fetch', action='store_true', help='download and unpack the Debian packages')
    if parser.parse_args().fetch:
        for name in PACKAGES:
            print(name, fetch(name))
