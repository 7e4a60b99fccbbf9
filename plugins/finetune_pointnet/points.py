"""Meshes and point clouds -> fixed-size point clouds on the unit sphere, as a ``(N, P, 3)`` batch.

An item is a mesh file (anything ``trimesh`` loads: .off .obj .ply .stl .glb ...), a point file (.xyz
text with 3 or more columns, .npy of shape (N, >=3)), or an ``(N, 3)`` array / tensor of points.

* A mesh is sampled on its surface: faces drawn in proportion to their area, a uniform point in each.
* A point cloud is subsampled (or, when it has fewer points, topped up by repeating random points).
* The points are centred on their mean and scaled so that the farthest lies on the unit sphere.
* In training only (``augment``), each cloud is rotated about ``rotation_axis`` by a random angle,
  scaled by a random factor in ``scale_range`` and jittered by Gaussian noise of std ``jitter``.

At inference the sampling is seeded per item by ``seed``, so one item always gives the same points; in
training every call draws fresh points (different views of one mesh), seeded from torch's generator so
that a seeded ``fit`` repeats itself. Loading happens wherever the preprocessor runs: in ``fit``, in the
DataLoader workers.
"""
from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from finetune.errors import InputError, OptionError
from finetune.modalities import Modality, is_one_item
from finetune.options import Option, boolean, non_negative_float, one_of

POINT_FILE_EXTENSIONS = ('.xyz', '.npy')
MESH_FILE_EXTENSIONS = ('.off', '.obj', '.ply', '.stl', '.glb', '.gltf')
AXES = ('x', 'y', 'z')
#: the fewest points or vertices that still describe a shape
MIN_POINTS = 3


def _scale_range(name: str, value: Any) -> tuple[float, float]:
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            and 0 < value[0] <= value[1] and math.isfinite(value[1])):
        return float(value[0]), float(value[1])
    raise OptionError(f'option {name!r}: expected (low, high) with 0 < low <= high, e.g. (0.8, 1.25), '
                      f'got {value!r}.')


def _seed(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OptionError(f'option {name!r}: expected an integer >= 0, got {value!r}.')
    return value


def point_preprocess_options() -> tuple[Option, ...]:
    """The ``preprocess_options`` schema of the point-cloud families."""
    return (
        Option('seed', 'int', 0, 'seed of the surface sampling at inference: one item, the same points', _seed),
        Option('unit_sphere', 'bool', True, 'centre each cloud on its mean and scale it into the unit sphere (the '
               'grouping radii 0.2 and 0.4 assume that scale)',
               boolean),
        Option('augment', 'bool', True, 'in training only: random rotation, scaling and jitter of each cloud',
               boolean),
        Option('rotation_axis', 'str | None', 'y', "axis of the random rotation ('x', 'y', 'z'), None for none",
               one_of(AXES, allow_none=True)),
        Option('scale_range', 'tuple[2]', (0.8, 1.25), 'range of the random scale factor', _scale_range),
        Option('jitter', 'float', 0.01, 'std of the Gaussian noise added to each point (clipped at 5x)',
               non_negative_float),
    )


# ---------------------------------------------------------------- the modality
def _is_shape(item: Any) -> bool:
    """A mesh or point cloud in memory: a trimesh object, anything with vertices, or an (N, 3) array of N > 3
    points (an image three pixels wide is no image)."""
    if type(item).__module__.startswith('trimesh.') or hasattr(item, 'vertices'):
        return True
    if isinstance(item, np.ndarray) or type(item).__name__ == 'Tensor':
        shape = tuple(item.shape)
        return len(shape) == 2 and shape[1] == 3 and shape[0] > 3
    return False


def _one_shape(items: Any) -> bool:
    """One item, not a batch: a path, a mesh object, or one (N, 3) array (a 3-D array is a stack of clouds)."""
    if isinstance(items, (np.ndarray, torch.Tensor)):
        return items.ndim == 2
    return isinstance(items, (str, os.PathLike)) or _is_shape(items)


def sample_shapes() -> list[np.ndarray]:
    """Eight generated point clouds (sphere, cube surface, torus, helix, plane, cylinder, cone, noise) of several
    sizes, for an export's parity check."""
    rng = np.random.default_rng(0)
    t = rng.random((4096, 2)).astype(np.float32) * 2 * np.pi
    sphere = rng.normal(size=(3000, 3))
    cube = rng.uniform(-1, 1, (2500, 3))
    cube[np.arange(2500), rng.integers(0, 3, 2500)] = rng.choice([-1.0, 1.0], 2500)
    torus = np.stack([(2 + np.cos(t[:, 0])) * np.cos(t[:, 1]), (2 + np.cos(t[:, 0])) * np.sin(t[:, 1]),
                      np.sin(t[:, 0])], axis=1)
    s = np.linspace(0, 6 * np.pi, 1500)
    helix = np.stack([np.cos(s), np.sin(s), s / 6], axis=1)
    plane = np.concatenate([rng.uniform(-1, 1, (2000, 2)), rng.normal(0, 0.01, (2000, 1))], axis=1)
    cylinder = np.stack([np.cos(t[:3000, 0]), np.sin(t[:3000, 0]), rng.uniform(-2, 2, 3000)], axis=1)
    h = rng.random(2200)
    cone = np.stack([h * np.cos(t[:2200, 1]), h * np.sin(t[:2200, 1]), 1 - h], axis=1)
    return [x.astype(np.float32) for x in (sphere, cube, torus, helix, plane, cylinder, cone,
                                           rng.normal(size=(1800, 3)))]


#: the modality this plugin adds to the core's text and image
MESH = Modality('mesh', MESH_FILE_EXTENSIONS + POINT_FILE_EXTENSIONS, _is_shape, _one_shape,
                'mesh files (' + ' '.join(MESH_FILE_EXTENSIONS) + '), point files (.xyz .npy) or (N, 3) arrays',
                samples=sample_shapes,
                points=lambda item: sample_points(read_shape(item), 1024, np.random.default_rng(0)))


# ---------------------------------------------------------------- shapes
@dataclass(frozen=True)
class Mesh:
    """A triangle mesh ready for area-weighted sampling."""

    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64, faces of zero area removed
    cumulative_area: np.ndarray  # (F,) float64

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        total = self.cumulative_area[-1]
        face = np.searchsorted(self.cumulative_area, rng.random(n) * total, side='right')
        face = np.minimum(face, len(self.faces) - 1)
        a, b, c = (self.vertices[self.faces[face, k]] for k in range(3))
        r1, r2 = np.sqrt(rng.random((n, 1))), rng.random((n, 1))
        return (1 - r1) * a + r1 * (1 - r2) * b + r1 * r2 * c  # uniform on each triangle


def _where(index: int, path: str | None) -> str:
    return f'item {index} ({path!r})' if path else f'item {index}'


def _check_points(points: np.ndarray, index: int, path: str | None = None) -> np.ndarray:
    if not np.isfinite(points).all():
        raise InputError(f'{_where(index, path)}: the points hold NaN or infinite coordinates.')
    if len(points) < MIN_POINTS:
        raise InputError(f'{_where(index, path)}: {len(points)} points; a point cloud needs at least '
                         f'{MIN_POINTS}.')
    return points


def mesh_from_arrays(vertices: np.ndarray, faces: np.ndarray, index: int = 0, path: str | None = None) -> Mesh:
    """A :class:`Mesh` from vertex and face arrays; InputError naming `path` when it cannot be sampled."""
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(faces, dtype=np.int64)
    if faces.size == 0:
        if len(vertices) == 0:
            raise InputError(f'{_where(index, path)}: the mesh is empty: no vertices and no faces.')
        raise InputError(f'{_where(index, path)}: the mesh has no faces ({len(vertices):,} vertices), so it has '
                         f'no surface to sample. Pass its points as an (N, 3) array or save them as .xyz/.npy '
                         f'to use them as a point cloud.')
    if len(vertices) < MIN_POINTS:
        raise InputError(f'{_where(index, path)}: the mesh has {len(vertices)} vertices; a surface needs at '
                         f'least {MIN_POINTS}.')
    if not np.isfinite(vertices).all():
        raise InputError(f'{_where(index, path)}: the mesh has NaN or infinite vertex coordinates.')
    faces = faces.reshape(len(faces), -1)[:, :3]
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise InputError(f'{_where(index, path)}: a face refers to a vertex that does not exist.')
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    keep = area > 0
    if not keep.any():
        raise InputError(f'{_where(index, path)}: every face of the mesh has zero area; nothing to sample.')
    return Mesh(vertices, faces[keep], np.cumsum(area[keep]))


def _read_point_file(path: str, index: int) -> np.ndarray:
    try:
        points = np.load(path, allow_pickle=False) if path.lower().endswith('.npy') \
            else np.loadtxt(path, dtype=np.float64, ndmin=2)
    except Exception as exc:  # noqa: BLE001 - the message says which file and why
        raise InputError(f'{_where(index, path)}: cannot be read as a point file ({type(exc).__name__}: '
                         f'{exc}).') from exc
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3 or not np.issubdtype(points.dtype, np.number):
        raise InputError(f'{_where(index, path)}: expected points of shape (N, 3) (or more columns, of which '
                         f'the first three are x, y, z), got shape {points.shape} ({points.dtype}).')
    return _check_points(points[:, :3].astype(np.float64), index, path)


def read_off(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and triangles of an OFF file; polygons are split into fans, per-element colours ignored.

    trimesh fails on OFF polygons with numpy 2 (CGAL's mpi.off and others); this reader is its fallback.
    Also reads ModelNet's 'OFF490 518 0' first lines. Raises ValueError for a malformed file."""
    with open(path, encoding='utf-8', errors='replace') as f:
        lines = [line.split('#', 1)[0].split() for line in f]
    lines = [line for line in lines if line]
    if not lines or 'OFF' not in lines[0][0].upper():
        raise ValueError('no OFF header')
    head = lines[0][0].upper()
    counts = ([head.split('OFF', 1)[1]] if head.split('OFF', 1)[1] else []) + lines[0][1:]
    rest = lines[1:]
    if len(counts) < 2:
        counts, rest = rest[0], rest[1:]
    n_vertices, n_faces = int(counts[0]), int(counts[1])
    if len(rest) < n_vertices + n_faces:
        raise ValueError(f'the header announces {n_vertices} vertices and {n_faces} faces, the file has '
                         f'{len(rest)} lines of them')
    vertices = np.array([[float(v) for v in line[:3]] for line in rest[:n_vertices]], dtype=np.float64)
    triangles = []
    for line in rest[n_vertices:n_vertices + n_faces]:
        corners = [int(v) for v in line[1:1 + int(line[0])]]
        triangles += [(corners[0], corners[k], corners[k + 1]) for k in range(1, len(corners) - 1)]
    return vertices, np.array(triangles, dtype=np.int64).reshape(-1, 3)


def _trimesh_load(path: str):
    """``trimesh.load`` as one mesh; a PLY header with non-UTF-8 bytes (a Latin-1 comment), which trimesh's PLY
    reader refuses, is read with those bytes replaced (only comments and names may hold them)."""
    import io

    import trimesh
    try:
        return trimesh.load(path, force='mesh', process=False)
    except UnicodeDecodeError:
        if not path.lower().endswith('.ply'):
            raise
        with open(path, 'rb') as f:
            data = f.read()
        end = data.find(b'end_header')
        if end < 0:
            raise
        header = bytes(b if b < 128 else ord('?') for b in data[:end])
        return trimesh.load(io.BytesIO(header + data[end:]), file_type='ply', force='mesh', process=False)


def _read_mesh_file(path: str, index: int) -> Mesh:
    import trimesh
    try:
        loaded = _trimesh_load(path)
    except Exception as exc:  # noqa: BLE001 - trimesh raises many kinds; the message names the file
        if path.lower().endswith('.off'):
            try:
                return mesh_from_arrays(*read_off(path), index, path)
            except (ValueError, IndexError):
                pass  # not OFF after all: report trimesh's reason
        raise InputError(f'{_where(index, path)}: cannot be loaded as a mesh ({type(exc).__name__}: '
                         f'{exc}).') from exc
    vertices = getattr(loaded, 'vertices', None)
    faces = getattr(loaded, 'faces', None)
    if vertices is None:
        raise InputError(f'{_where(index, path)}: trimesh read no geometry from it ({type(loaded).__name__}).')
    if faces is None or len(faces) == 0:
        cloud = trimesh.load(path, process=False)  # as itself: a point cloud keeps its vertices
        points = len(getattr(cloud, 'vertices', ()))
        if points:
            raise InputError(f'{_where(index, path)}: a point cloud of {points:,} points with no faces, so no '
                             f'surface to sample. Pass its points as an (N, 3) array, e.g. '
                             f'np.asarray(trimesh.load(path).vertices), or save them as .npy / .xyz.')
    return mesh_from_arrays(vertices, faces if faces is not None else np.empty((0, 3)), index, path)


def _header_problem(path: str, head: bytes, size: int) -> str | None:
    """Why the first bytes `head` of a file of `size` bytes do not start a shape of its format, or None."""
    ext = os.path.splitext(path)[1].lower()
    text = head.decode('latin-1')
    if ext == '.npy':
        return None if head.startswith(b'\x93NUMPY') else 'is not a .npy file (no NumPy header)'
    if ext == '.xyz':
        first = next((line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith('#')),
                     [])
        try:
            [float(v) for v in first[:3]]
        except ValueError:
            return f'does not start with x y z numbers (first line {" ".join(first)[:40]!r})'
        return None if len(first) >= 3 else 'has fewer than 3 numbers on its first line'
    if ext == '.off':
        words = text.split()
        return None if words and 'OFF' in words[0].upper() else 'has no OFF header'
    if ext == '.ply':
        return None if head.startswith(b'ply') else "has no 'ply' header"
    if ext == '.glb':
        return None if head.startswith(b'glTF') else "has no binary glTF ('glTF') header"
    if ext == '.stl' and not text.lstrip().lower().startswith('solid'):
        if size < 84:
            return 'is too short for a binary STL file'
        count = int.from_bytes(head[80:84], 'little')
        return None if size == 84 + 50 * count else f'is not ASCII STL and its size does not fit binary STL ' \
                                                       f'({count:,} triangles announced)'
    return None


def mesh_file_problem(path: str) -> str | None:
    """Why `path` cannot be read as a mesh or point file, judged from a stat and its first bytes, or None."""
    from finetune.preprocessing import file_problem
    problem = file_problem(path)
    if problem is not None:
        return problem
    try:
        with open(path, 'rb') as f:
            head = f.read(4096)
    except OSError as exc:
        return f'cannot be read ({exc.strerror or exc})'
    return _header_problem(path, head, os.path.getsize(path))


#: bytes of parsed shapes each process keeps (least recently used dropped first); FINETUNE_MESH_CACHE_MB sets it
CACHE_BYTES = int(float(os.environ.get('FINETUNE_MESH_CACHE_MB', 1024)) * 2 ** 20)
_cache: OrderedDict[tuple, Mesh | np.ndarray] = OrderedDict()
_cache_lock = threading.Lock()


def _nbytes(shape: Mesh | np.ndarray) -> int:
    if isinstance(shape, Mesh):
        return shape.vertices.nbytes + shape.faces.nbytes + shape.cumulative_area.nbytes
    return shape.nbytes


def _read_file(path: str, mtime_ns: int, size: int, index: int) -> Mesh | np.ndarray:
    """The parsed file, from the cache when the same version (modification time and size) was read before.
    Failures are not cached, so an error always names the `index` of the item that asked."""
    key = (path, mtime_ns, size)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    read = _read_point_file if path.lower().endswith(POINT_FILE_EXTENSIONS) else _read_mesh_file
    shape = read(path, index)
    for array in ((shape.vertices, shape.faces, shape.cumulative_area) if isinstance(shape, Mesh) else (shape,)):
        array.flags.writeable = False  # shared by every later read: nobody may change it in place
    with _cache_lock:
        _cache[key] = shape
        total = sum(_nbytes(s) for s in _cache.values())
        while total > CACHE_BYTES and len(_cache) > 1:
            total -= _nbytes(_cache.popitem(last=False)[1])
    return shape


def read_shape(item: Any, index: int = 0) -> Mesh | np.ndarray:
    """An item -> a :class:`Mesh` or an ``(N, 3)`` float64 point array. Raises InputError naming the item.

    Files are cached per process (keyed by path, modification time and size), so a mesh used in many
    training rows is parsed once per worker."""
    if isinstance(item, Mesh):
        return item
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if not os.path.isfile(path):
            raise InputError(f'item {index}: mesh or point file {path!r} does not exist.')
        stat = os.stat(path)
        return _read_file(path, stat.st_mtime_ns, stat.st_size, index)
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu()
        item = (item.float() if item.is_floating_point() else item).numpy()
    if type(item).__name__ == 'Scene' and hasattr(item, 'geometry'):  # a trimesh.Scene: its meshes as one
        to_geometry = getattr(item, 'to_geometry', None) or (lambda: item.dump(concatenate=True))
        item = to_geometry()
    if hasattr(item, 'vertices') and hasattr(item, 'faces'):  # a trimesh.Trimesh in memory
        return mesh_from_arrays(item.vertices, item.faces, index)
    if hasattr(item, 'vertices'):  # a trimesh.PointCloud
        raise InputError(f'item {index}: a {type(item).__name__} has points but no surface; pass its points as an '
                         f'(N, 3) array: np.asarray(cloud.vertices).')
    if isinstance(item, np.ndarray):
        if item.ndim != 2 or item.shape[1] != 3 or not np.issubdtype(item.dtype, np.number) \
                or np.iscomplexobj(item):
            raise InputError(f'item {index}: a point cloud must be an (N, 3) array of real numbers, got shape '
                             f'{item.shape} ({item.dtype}).')
        return _check_points(item.astype(np.float64), index)
    shown = f' {item[:60]!r}' if isinstance(item, str) else ''
    raise InputError(f'item {index}: a point-cloud model takes mesh files (.off .obj .ply .stl .glb ...), point '
                     f'files (.xyz .npy), (N, 3) arrays or trimesh meshes, got {type(item).__name__}{shown}.')


# ---------------------------------------------------------------- sampling and augmentation
def sample_points(shape: Mesh | np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` points of `shape`: on a mesh's surface, or drawn from a cloud (all of them first, when it has
    fewer than `n`)."""
    if isinstance(shape, Mesh):
        return shape.sample(n, rng)
    if len(shape) >= n:
        return shape[rng.choice(len(shape), n, replace=False)]
    extra = rng.choice(len(shape), n - len(shape), replace=True)
    return shape[np.concatenate([rng.permutation(len(shape)), extra])]


def to_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre on the mean and scale so that the farthest point lies at distance 1."""
    points = points - points.mean(axis=0, keepdims=True)
    radius = np.sqrt((points ** 2).sum(axis=1).max())
    return points / radius if radius > 0 else points


def rotation_matrix(axis: str, angle: float) -> np.ndarray:
    """The 3x3 rotation by `angle` radians about the axis named 'x', 'y' or 'z'."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][AXES.index(axis)]  # the plane the rotation turns
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def augment_points(points: np.ndarray, rng: np.random.Generator, rotation_axis: str | None,
                   scale_range: tuple[float, float], jitter: float) -> np.ndarray:
    """Random rotation about `rotation_axis`, random isotropic scale, clipped Gaussian jitter."""
    if rotation_axis is not None:
        points = points @ rotation_matrix(rotation_axis, rng.uniform(0, 2 * math.pi)).T
    low, high = scale_range
    if high > low or low != 1.0:
        points = points * rng.uniform(low, high)
    if jitter > 0:
        points = points + np.clip(rng.normal(0, jitter, points.shape), -5 * jitter, 5 * jitter)
    return points


class PointPreprocessor:
    """Callable: items -> a float32 tensor ``(N, num_points, 3)``; :meth:`train_batch` draws training views."""

    def __init__(self, num_points: int, seed: int = 0, unit_sphere: bool = True, augment: bool = True,
                 rotation_axis: str | None = 'y', scale_range: tuple[float, float] = (0.8, 1.25),
                 jitter: float = 0.01):
        self.num_points, self.seed, self.unit_sphere = num_points, seed, unit_sphere
        self.augment, self.rotation_axis = augment, rotation_axis
        self.scale_range, self.jitter = tuple(scale_range), jitter

    def view(self, item: Any, rng: np.random.Generator, index: int = 0, augment: bool = False) -> np.ndarray:
        """One ``(num_points, 3)`` float32 view of `item`."""
        points = sample_points(read_shape(item, index), self.num_points, rng)
        if self.unit_sphere:
            points = to_unit_sphere(points)
        if augment:
            points = augment_points(points, rng, self.rotation_axis, self.scale_range, self.jitter)
        return points.astype(np.float32)

    def _items(self, items: Sequence[Any]) -> list:
        if is_one_item(items, 'mesh'):
            items = [items]
        items = list(items)
        if not items:
            raise InputError('no items to preprocess: expected a non-empty list of meshes or point clouds.')
        return items

    def __call__(self, items: Sequence[Any]) -> torch.Tensor:
        """Inference: the same points for the same item, every time."""
        views = [self.view(item, np.random.default_rng(self.seed), i) for i, item in enumerate(self._items(items))]
        return torch.from_numpy(np.stack(views))

    def train_batch(self, items: Sequence[Any]) -> torch.Tensor:
        """Training: fresh points (and augmentation, if on) on every call, seeded from torch's generator."""
        rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item()))
        views = [self.view(item, rng, i, augment=self.augment) for i, item in enumerate(self._items(items))]
        return torch.from_numpy(np.stack(views))


def mesh_views(item: Any, num_views: int, num_points: int = 2048, seed: int = 0, augment: bool = True,
               **options: Any) -> list[np.ndarray]:
    """`num_views` different ``(num_points, 3)`` views of one mesh or cloud (fresh sampling, and the
    training augmentation when `augment`), reproducible by `seed`: e.g. held-out queries of a mesh for
    instance retrieval. `options` are the preprocess options (rotation_axis, scale_range, jitter, ...)."""
    from finetune.options import positive_int, validate_mapping
    positive_int()('num_points', num_points)
    pre = PointPreprocessor(num_points, **validate_mapping('mesh_views options', options,
                                                            point_preprocess_options()))
    rng = np.random.default_rng(seed)
    return [pre.view(item, rng, augment=augment) for _ in range(num_views)]
