"""Instance retrieval on real meshes: which mesh is this scan of?

Each mesh is its own class. Training sees fresh views of every mesh (new surface samples, a random
rotation about the up axis, scaling and jitter); the queries are held-out views made the same way with
other seeds, and the metric asks whether the other view of the same mesh ranks first.

The meshes: Debian's ``libcgal-demo`` package carries about 140 real ones (armadillo, bunny, cow,
elephant, ...). Fetch them without installing anything (``--fetch`` runs exactly this)::

    apt-get download libcgal-demo
    dpkg -x libcgal-demo_*.deb cgal
    mkdir -p cgal/data && tar xf cgal/usr/share/doc/libcgal-dev/data.tar.gz -C cgal

then ``python examples/mesh_retrieval.py --meshes cgal/data/meshes``. Any folder of mesh files works.
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

import finetune
from finetune.errors import InputError
from finetune_pointnet.points import mesh_views, read_shape

MESH_GLOBS = ('*.off', '*.obj', '*.ply', '*.stl', '*.glb')


def fetch_cgal(folder: str) -> str:
    """Download and unpack libcgal-demo's meshes into `folder`; return the folder of .off files."""
    os.makedirs(folder, exist_ok=True)
    subprocess.run(['apt-get', 'download', 'libcgal-demo'], cwd=folder, check=True)
    deb = sorted(glob.glob(os.path.join(folder, 'libcgal-demo_*.deb')))[-1]
    subprocess.run(['dpkg', '-x', deb, os.path.join(folder, 'pkg')], check=True)
    archive = os.path.join(folder, 'pkg', 'usr', 'share', 'doc', 'libcgal-dev', 'data.tar.gz')
    subprocess.run(['tar', 'xf', archive, '-C', folder], check=True)
    return os.path.join(folder, 'data', 'meshes')


def usable_meshes(folder: str) -> list[str]:
    """Mesh files of `folder` that load and have a surface; the others are listed with the reason."""
    paths = sorted(p for pattern in MESH_GLOBS for p in glob.glob(os.path.join(folder, pattern)))
    good = []
    for path in paths:
        try:
            read_shape(path)
            good.append(path)
        except InputError as exc:
            print(f'  skipped {os.path.basename(path)}: {str(exc).split(": ", 1)[-1]}')
    return good


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--meshes', default='cgal/data/meshes', help='folder of mesh files')
    parser.add_argument('--fetch', action='store_true', help='download libcgal-demo into ./cgal first')
    parser.add_argument('--model', default='pointnet-small')
    parser.add_argument('--num-points', type=int, default=1024)
    parser.add_argument('--views', type=int, default=8, help='training views of each mesh per epoch')
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--precision', default='auto', choices=('auto', 'bf16', 'fp32'))
    parser.add_argument('--seed', type=int, default=42)
    parser.add_argument('--output', default='out/mesh-retrieval')
    args = parser.parse_args()

    folder = fetch_cgal('cgal') if args.fetch else args.meshes
    if not os.path.isdir(folder):
        sys.exit(f'{folder!r} is not a folder of meshes; pass --meshes FOLDER or --fetch (see the docstring).')
    paths = usable_meshes(folder)
    print(f'{len(paths)} meshes in {folder}')
    def name(path: str) -> str:  # a label, not a file name: 'bunny.off' would read as a second mesh column
        stem, ext = os.path.splitext(os.path.basename(path))
        return f'{stem} ({ext[1:]})'
    train = [(path, name(path)) for path in paths for _ in range(args.views)]
    queries = [(view, name(path)) for i, path in enumerate(paths)
               for view in mesh_views(path, 2, args.num_points, seed=10_000 + i)]

    started = time.perf_counter()
    run = finetune.fit(args.model, train, queries, model_options={'num_points': args.num_points},
                       epochs=args.epochs, batch_size=32, precision=args.precision, seed=args.seed,
                       output_dir=args.output)
    minutes = (time.perf_counter() - started) / 60
    before, after = run.metrics['before'], run.metrics['after']
    print(f'{args.model}, {args.num_points} points, {args.epochs} epochs, {run.config["precision"]}, '
          f'{minutes:.1f} min')
    for key in ('hit@1', 'mrr@10', 'map@10', 'ndcg@10'):
        print(f'  {key:8s} {before[key]:.3f} -> {after[key]:.3f}')
    print(f'model saved in {args.output}/model; finetune.load() it and .encode() mesh files')


if __name__ == '__main__':
    main()
