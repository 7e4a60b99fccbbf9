"""The PointNet++ plugin: registry entries, the network's sampling and grouping, mesh / point data, errors."""
from __future__ import annotations

import math
import os
from importlib.metadata import entry_points

import numpy as np
import pytest
import torch
import trimesh

import finetune
from finetune import build_model
from finetune.data import load_data
from finetune.errors import InputError, OptionError, WeightsNotFoundError
from finetune_pointnet.backbone import PointNetBackbone
from finetune_pointnet.network import ball_query, farthest_point_sample, square_distance
from finetune_pointnet.points import (PointPreprocessor, augment_points, mesh_views, read_off, read_shape,
                                      rotation_matrix, to_unit_sphere)

TINY = {'num_points': 64, 'hidden_dim': 32, 'embed_dim': 16}


def tiny(**more):
    return build_model('pointnet-small', {**TINY, **more})


def shapes():
    return [trimesh.creation.box(extents=(2, 1, 0.5)), trimesh.creation.icosphere(subdivisions=2),
            trimesh.creation.torus(1.0, 0.3), trimesh.creation.cylinder(0.5, 2.0)]


# ---------------------------------------------------------------- registry
def test_pointnet_is_registered_through_its_entry_point():
    assert 'pointnet' in {ep.name for ep in entry_points(group='finetune.backbones')}
    assert finetune.list_models(task='mesh-to-mesh') == ['pointnet-base', 'pointnet-small']
    spec = finetune.registry.get_spec('pointnet-base')
    assert (spec.output_dim, spec.modality, spec.plugin, spec.layout) == (512, 'mesh', 'pointnet', 'tokens')


def test_describe_models_lists_the_mesh_models(capsys):
    finetune.describe_models(task='mesh-to-mesh')
    out = capsys.readouterr().out
    assert 'pointnet-base' in out and 'pointnet-small' in out and '512' in out
    assert 'resnet50' not in out


def test_list_model_options_shows_the_point_options(capsys):
    finetune.list_model_options('pointnet-base')
    out = capsys.readouterr().out
    for key, default in (('num_points', '2048'), ('embed_dim', '512'), ('hidden_dim', '1024'), ('dropout', '0.1'),
                         ('preprocess_options.rotation_axis', "'y'")):
        line = next(line for line in out.splitlines() if line.count('│') > 2 and line.split('│')[1].strip() == key)
        assert default in line, line


def test_pointnet_base_gives_512_dim_unit_embeddings():
    model = build_model('pointnet-base')
    assert isinstance(model.backbone, PointNetBackbone) and model.output_dim == 512
    emb = model.encode(shapes())
    assert emb.shape == (4, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.abs(emb[0] - emb[1]).max() > 1e-3  # different shapes, different embeddings


def test_pointnet_base_has_the_papers_centroid_counts():
    net = build_model('pointnet-base').backbone.net
    xyz = torch.rand(2, 2048, 3)
    centres, feats = net.sa1(xyz, None)
    assert centres.shape == (2, 512, 3) and feats.shape == (2, 512, 128)
    centres, feats = net.sa2(centres, feats)
    assert centres.shape == (2, 128, 3) and feats.shape == (2, 128, 256)


def test_forward_backward_reaches_every_parameter():
    model = tiny().train()
    x = torch.rand(4, 64, 3) * 2 - 1
    model(x).pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize('pooler', ['GeM', 'avg', 'max'])
def test_poolers_replace_the_final_max(pooler):
    torch.manual_seed(0)
    base = tiny()
    torch.manual_seed(0)
    pooled = tiny(pooler=pooler)
    x = torch.rand(3, 64, 3)
    with torch.no_grad():
        a, b = base(x), pooled(x)
    assert b.shape == (3, 16)
    if pooler == 'max':
        torch.testing.assert_close(a, b)  # the model's own pooling is the max over the centroids
    else:
        assert (a - b).abs().max() > 1e-4


def test_output_dim_adds_a_projection_and_freeze_by_layer():
    model = tiny(output_dim=8, freeze={'except_last_layers': 1})
    assert model.encode(np.random.rand(100, 3)).shape == (1, 8)
    trainable = {n.split('.')[1] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {'head'}


def test_pretrained_true_says_there_are_no_published_weights(tmp_path):
    with pytest.raises(WeightsNotFoundError, match='trained from scratch'):
        build_model('pointnet-small', {**TINY, 'pretrained': True})
    model = tiny()
    path = tmp_path / 'w.pt'
    torch.save(model.backbone.state_dict(), path)
    again = tiny(pretrained=str(path))
    x = torch.rand(2, 64, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), again(x))


@pytest.mark.parametrize('options, word', [({'num_points': 8}, 'num_points'), ({'dropout': 1.5}, 'dropout'),
                                           ({'hidden_dim': 1}, 'hidden_dim'),
                                           ({'preprocess_options': {'rotation_axis': 'w'}}, 'rotation_axis'),
                                           ({'preprocess_options': {'scale_range': (2, 1)}}, 'scale_range'),
                                           ({'preprocess_options': {'jitter': -1}}, 'jitter')])
def test_bad_options_name_the_option(options, word):
    with pytest.raises(OptionError, match=word):
        build_model('pointnet-small', options)


# ---------------------------------------------------------------- sampling and grouping
def slow_farthest_point_sample(points: np.ndarray, n: int) -> list[int]:
    chosen = [0]
    for _ in range(n - 1):
        nearest = [min(float(((p - points[c]) ** 2).sum()) for c in chosen) for p in points]
        chosen.append(int(np.argmax(nearest)))
    return chosen


@pytest.mark.parametrize('b, p, n', [(1, 10, 4), (3, 40, 12), (2, 64, 64)])
def test_farthest_point_sampling_matches_a_slow_reference(b, p, n):
    xyz = torch.rand(b, p, 3, generator=torch.Generator().manual_seed(p))
    got = farthest_point_sample(xyz, n)
    assert got.shape == (b, n)
    for i in range(b):
        assert got[i].tolist() == slow_farthest_point_sample(xyz[i].double().numpy(), n)


def test_farthest_point_sampling_picks_distinct_points_and_checks_n():
    xyz = torch.rand(2, 50, 3)
    idx = farthest_point_sample(xyz, 50)
    assert all(len(set(row.tolist())) == 50 for row in idx)
    with pytest.raises(ValueError):
        farthest_point_sample(xyz, 51)


def slow_ball_query(points: np.ndarray, centre: np.ndarray, radius: float, k: int) -> list[int]:
    inside = [j for j, q in enumerate(points) if ((q - centre) ** 2).sum() <= radius ** 2][:k]
    return inside + [inside[0]] * (k - len(inside))


def test_ball_query_matches_a_slow_reference():
    gen = torch.Generator().manual_seed(1)
    xyz = torch.rand(2, 60, 3, generator=gen)
    centre_idx = farthest_point_sample(xyz, 7)
    centres = torch.stack([xyz[i, centre_idx[i]] for i in range(2)])
    for radius, k in ((0.2, 5), (0.35, 8), (2.0, 10)):
        got = ball_query(xyz, centres, radius, k)
        assert got.shape == (2, 7, k)
        for i in range(2):
            for s in range(7):
                want = slow_ball_query(xyz[i].double().numpy(), centres[i, s].double().numpy(), radius, k)
                assert got[i, s].tolist() == want


def test_square_distance_stays_float32_under_bf16_autocast():
    a, b = torch.rand(1, 5, 3), torch.rand(1, 7, 3)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        d = square_distance(a, b)
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, torch.cdist(a, b) ** 2, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- preprocessing
def test_inference_sampling_is_seeded_centred_and_on_the_unit_sphere():
    pre = PointPreprocessor(256)
    box = trimesh.creation.box(extents=(4, 2, 1))
    a, b = pre([box]), pre([box])
    assert a.shape == (1, 256, 3) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)  # the same item gives the same points
    assert a[0].mean(0).abs().max() < 1e-5
    assert a[0].norm(dim=1).max() == pytest.approx(1.0, abs=1e-5)
    # points lie on the box surface: after undoing centring and scaling, one coordinate is at a face
    assert not torch.equal(PointPreprocessor(256, seed=1)([box]), a)


def test_surface_sampling_is_uniform_by_area():
    # a box 10 x 1 x 1: its four long faces carry 40/42 of the area
    box = trimesh.creation.box(extents=(10, 1, 1))
    shape = read_shape(box)
    pts = shape.sample(20000, np.random.default_rng(0))
    on_end_caps = np.isclose(np.abs(pts[:, 0]), 5.0).mean()
    assert on_end_caps == pytest.approx(2 / 42, abs=0.01)


def test_training_views_differ_and_augmentation_keeps_shape():
    pre = PointPreprocessor(128, jitter=0.0, scale_range=(1.0, 1.0))
    torus = trimesh.creation.torus(1.0, 0.3)
    torch.manual_seed(0)
    a, b = pre.train_batch([torus]), pre.train_batch([torus])
    assert not torch.allclose(a, b)  # fresh points each call
    # rotation about y with unit scale and no jitter keeps every point's distance to the centre and its y
    pts = to_unit_sphere(np.random.default_rng(0).normal(size=(50, 3)))
    out = augment_points(pts, np.random.default_rng(1), 'y', (1.0, 1.0), 0.0)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), np.linalg.norm(pts, axis=1), rtol=1e-6)
    np.testing.assert_allclose(out[:, 1], pts[:, 1], atol=1e-12)
    assert np.abs(out - pts).max() > 1e-3


def test_rotation_matrix_turns_the_named_axis():
    np.testing.assert_allclose(rotation_matrix('z', math.pi / 2) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(rotation_matrix('x', math.pi / 2) @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(rotation_matrix('y', math.pi / 2) @ [0, 0, 1], [1, 0, 0], atol=1e-12)


def test_fit_uses_training_augmentation_and_encode_does_not():
    model = tiny()
    box = trimesh.creation.box()
    torch.manual_seed(0)
    train_view = model.preprocess_for_training([box])
    torch.testing.assert_close(model.preprocess([box]), model.preprocess([box]))
    assert not torch.allclose(train_view, model.preprocess([box]))
    off = tiny(preprocess_options={'augment': False})
    # without augmentation a training view is still a fresh sample on the unit sphere, not rotated or scaled
    assert off.preprocess_for_training([box])[0].norm(dim=1).max() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize('ext', ['off', 'obj', 'ply', 'stl', 'glb'])
def test_mesh_files_of_each_format(tmp_path, ext):
    path = tmp_path / f'box.{ext}'
    trimesh.creation.box(extents=(2, 1, 1)).export(path)
    model = tiny()
    from_file = model.encode(str(path))
    from_memory = model.encode(trimesh.creation.box(extents=(2, 1, 1)))
    assert from_file.shape == (1, 16)
    np.testing.assert_allclose(from_file, from_memory, atol=1e-5)  # same surface, same seed, same points


def test_off_polygons_and_modelnet_headers(tmp_path):
    """trimesh fails on OFF polygon faces under numpy 2; the fallback reader splits them into fans."""
    cube = tmp_path / 'cube.off'
    cube.write_text('OFF\n# a unit cube of quads, one with a colour\n8 6 0\n' +
                    ''.join(f'{x} {y} {z}\n' for x in (0, 1) for y in (0, 1) for z in (0, 1)) +
                    '4 0 1 3 2\n4 4 6 7 5\n4 0 4 5 1\n4 2 3 7 6\n4 0 2 6 4\n4 1 5 7 3 255 0 0\n')
    vertices, triangles = read_off(str(cube))
    assert vertices.shape == (8, 3) and triangles.shape == (12, 3)
    mesh = read_shape(str(cube))
    assert mesh.cumulative_area[-1] == pytest.approx(6.0)  # the fans cover every face exactly
    box = trimesh.creation.box()
    quirk = tmp_path / 'modelnet.off'  # ModelNet glues the counts to the header: 'OFF8 12 0'
    quirk.write_text(f'OFF{len(box.vertices)} {len(box.faces)} 0\n' +
                     ''.join(' '.join(map(str, v)) + '\n' for v in box.vertices) +
                     ''.join('3 ' + ' '.join(map(str, f)) + '\n' for f in box.faces))
    vertices, triangles = read_off(str(quirk))
    np.testing.assert_allclose(vertices, box.vertices)
    np.testing.assert_array_equal(triangles, box.faces)
    assert tiny().encode(str(quirk)).shape == (1, 16)


def test_point_files_and_arrays(tmp_path):
    pts = np.random.default_rng(0).normal(size=(500, 3))
    np.save(tmp_path / 'cloud.npy', pts)
    np.savetxt(tmp_path / 'cloud.xyz', np.hstack([pts, np.ones((500, 3))]))  # x y z + normals
    model = tiny()
    emb = model.encode([str(tmp_path / 'cloud.npy'), str(tmp_path / 'cloud.xyz'), pts, torch.tensor(pts)])
    assert emb.shape == (4, 16)
    np.testing.assert_allclose(emb[1:], np.repeat(emb[:1], 3, axis=0), atol=1e-5)
    assert model.encode(np.random.rand(3, 100, 3)).shape == (3, 16)  # a (B, P, 3) array is B clouds
    assert model.encode(np.random.rand(10, 3)).shape == (1, 16)  # fewer points than num_points: repeated


def test_mesh_views_are_reproducible_and_different():
    box = trimesh.creation.box(extents=(3, 1, 1))
    views = mesh_views(box, 3, num_points=100, seed=7)
    again = mesh_views(box, 3, num_points=100, seed=7)
    assert len(views) == 3 and views[0].shape == (100, 3)
    assert all(np.array_equal(a, b) for a, b in zip(views, again))
    assert not np.allclose(views[0], views[1])


# ---------------------------------------------------------------- errors
def test_a_file_that_is_not_a_mesh_names_the_file(tmp_path):
    bad = tmp_path / 'broken.off'
    bad.write_text('this is not an OFF file\n1 2 3\n')
    with pytest.raises(InputError, match=r"item 1 \(.*broken\.off'\)"):
        tiny().encode([trimesh.creation.box(), str(bad)])


def test_a_missing_file_and_a_mesh_without_faces(tmp_path):
    with pytest.raises(InputError, match='does not exist'):
        tiny().encode(str(tmp_path / 'nope.obj'))
    cloud = tmp_path / 'cloud.ply'
    trimesh.PointCloud(np.random.rand(50, 3)).export(cloud)
    with pytest.raises(InputError, match=r"cloud\.ply'\): a point cloud of 50 points with no faces.*\(N, 3\) array"):
        tiny().encode(str(cloud))


def test_too_few_vertices_and_degenerate_meshes():
    with pytest.raises(InputError, match='2 vertices'):
        tiny().encode(trimesh.Trimesh(vertices=[[0, 0, 0], [1, 0, 0]], faces=[[0, 1, 1]], process=False))
    with pytest.raises(InputError, match='zero area'):
        tiny().encode(trimesh.Trimesh(vertices=[[0, 0, 0], [1, 0, 0], [2, 0, 0]], faces=[[0, 1, 2]], process=False))
    with pytest.raises(InputError, match='at least 3'):
        tiny().encode(np.zeros((2, 3)).reshape(2, 3).repeat(1, axis=0)[None][0][:2])


@pytest.mark.parametrize('bad, expected', [(np.zeros((10, 2)), r'\(N, 3\)'), (np.zeros((4, 5, 6, 3)), r'\(N, 3\)'),
                                           (np.full((10, 3), np.nan), 'NaN'), (42, 'mesh files')])
def test_bad_point_items_say_what_was_expected(bad, expected):
    with pytest.raises(InputError, match=expected):
        tiny().encode([bad])


def test_bad_point_file_shape(tmp_path):
    np.save(tmp_path / 'flat.npy', np.zeros((10, 2)))
    with pytest.raises(InputError, match=r"flat\.npy.*\(N, 3\).*\(10, 2\)"):
        tiny().encode(str(tmp_path / 'flat.npy'))


@pytest.mark.parametrize('batch, expected', [(np.zeros((2, 64, 3)), 'tensor'), (torch.zeros(2, 64, 2), r'\(N, P, 3\)'),
                                             (torch.zeros(2, 64, 3, dtype=torch.long), 'float'),
                                             (torch.zeros(2, 8, 3), 'at least 16')])
def test_forward_checks_the_batch(batch, expected):
    with pytest.raises(InputError, match=expected):
        tiny()(batch)


# ---------------------------------------------------------------- data
def _write_class_folders(root):
    for name, make in (('boxes', lambda i: trimesh.creation.box(extents=(1 + i, 1, 1))),
                       ('balls', lambda i: trimesh.creation.icosphere(subdivisions=1, radius=1 + i))):
        os.makedirs(root / name)
        for i in range(3):
            make(i).export(root / name / f'{i}.off')


def test_class_folders_of_meshes_are_labeled_data(tmp_path):
    _write_class_folders(tmp_path)
    data = load_data(str(tmp_path))
    assert data.kind == 'labeled' and data.modalities == ('mesh',) and len(data) == 6
    assert sorted(data.label_names) == ['balls', 'boxes']
    (tmp_path / 'boxes' / 'photo.png').write_bytes(b'')
    with pytest.raises(InputError, match='mix'):
        load_data(str(tmp_path))


def test_csv_with_relative_mesh_paths(tmp_path):
    _write_class_folders(tmp_path)
    (tmp_path / 'train.csv').write_text(
        'item,label\n' + ''.join(f'{c}/{i}.off,{c}\n' for c in ('boxes', 'balls') for i in range(3)))
    data = load_data(str(tmp_path / 'train.csv'))
    assert data.kind == 'labeled' and data.modalities == ('mesh',)
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in data.a)


def test_evaluate_and_save_load_round_trip(tmp_path):
    _write_class_folders(tmp_path / 'data')
    model = tiny()
    metrics = finetune.evaluate(model, str(tmp_path / 'data'))
    assert 0 <= metrics['map@10'] <= 1 and metrics['num_queries'] == 6
    model.save(str(tmp_path / 'model')) if hasattr(model, 'save') else finetune.save_model(model, str(tmp_path / 'model'))
    loaded = finetune.load(str(tmp_path / 'model'))
    item = str(tmp_path / 'data' / 'boxes' / '0.off')
    np.testing.assert_allclose(loaded.encode(item), model.encode(item), atol=1e-6)


# ---------------------------------------------------------------- end to end
def _shape(kind: str, rng: np.random.Generator) -> trimesh.Trimesh:
    if kind == 'sphere':
        return trimesh.creation.icosphere(subdivisions=2, radius=rng.uniform(0.8, 1.2))
    if kind == 'box':
        return trimesh.creation.box(extents=rng.uniform(0.5, 2.0, 3))
    if kind == 'cylinder':
        return trimesh.creation.cylinder(radius=rng.uniform(0.3, 0.6), height=rng.uniform(1.5, 3))
    if kind == 'torus':
        return trimesh.creation.torus(major_radius=1.0, minor_radius=rng.uniform(0.15, 0.4))
    if kind == 'cone':
        return trimesh.creation.cone(radius=rng.uniform(0.5, 1), height=rng.uniform(1, 2))
    return trimesh.creation.capsule(height=rng.uniform(1, 2), radius=rng.uniform(0.3, 0.5))


def test_fit_on_generated_shapes_improves_retrieval():
    """Six shape classes, eight random meshes each; queries are fresh surface samples of those meshes."""
    rng = np.random.default_rng(0)
    kinds = ('sphere', 'box', 'cylinder', 'torus', 'cone', 'capsule')
    train = [(_shape(kind, rng), kind) for kind in kinds for _ in range(8)]
    options = {'rotation_axis': None}  # generated shapes share one up axis
    queries = [(mesh_views(mesh, 1, 256, seed=i, **options)[0], kind) for i, (mesh, kind) in enumerate(train)]
    torch.manual_seed(0)
    model = build_model('pointnet-small', {'num_points': 256, 'hidden_dim': 128, 'embed_dim': 32,
                                           'preprocess_options': options})
    lines = []
    run = finetune.fit(model, train, queries, epochs=90, batch_size=24, num_workers=0, progress=False,
                       log=lines.append)
    assert any('NormalizedSoftmaxLoss' in line for line in lines)  # the family's default loss
    assert run.config['precision'] == 'fp32'  # the family's choice under precision='auto'
    before, after = run.metrics['before']['map@10'], run.metrics['after']['map@10']
    assert after > before + 0.1, (before, after)
    assert after > 0.7


def test_cli_fits_and_encodes_meshes(tmp_path):
    from click.testing import CliRunner

    from finetune.cli import main
    _write_class_folders(tmp_path / 'data')
    runner = CliRunner()
    result = runner.invoke(main, ['fit', '--model', 'pointnet-small', '--train-data', str(tmp_path / 'data'),
                                  '--model-option', 'num_points=64', '--model-option', 'hidden_dim=32',
                                  '--model-option', 'embed_dim=16', '--batch-size', '4', '--num-workers', '1',
                                  '--output', str(tmp_path / 'out')])
    assert result.exit_code == 0, result.output
    assert 'NormalizedSoftmaxLoss' in result.output
    items = tmp_path / 'items.csv'  # label first, relative paths, an Excel byte-order mark
    items.write_text('\ufefflabel,item\n' + ''.join(f'boxes,data/boxes/{i}.off\n' for i in range(3)), encoding='utf-8')
    result = runner.invoke(main, ['encode', '--model', str(tmp_path / 'out' / 'model'), '--input', str(items),
                                  '--output', str(tmp_path / 'emb.npy')])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / 'emb.npy').shape == (3, 16)  # the header row is no item


def test_set_abstraction_shortcut_equals_the_grouped_mlp():
    """SA2 applies its first Linear per point and per centre before grouping; the result is the paper's."""
    from finetune_pointnet.network import gather_points
    torch.manual_seed(0)
    sa = tiny().backbone.net.sa2.eval()
    xyz, features = torch.rand(2, 40, 3), torch.rand(2, 40, sa.mlp.layers[0].in_features - 3)
    centres, fast = sa(xyz, features)
    idx = ball_query(xyz, centres, sa.radius, sa.k)
    grouped = torch.cat([gather_points(xyz, idx) - centres.unsqueeze(2), gather_points(features, idx)], dim=-1)
    torch.testing.assert_close(fast, sa.mlp(grouped).max(dim=2).values, atol=1e-5, rtol=1e-5)


def test_training_views_are_augmented_and_inference_views_are_not():
    box = trimesh.creation.box(extents=(2, 1, 1))
    doubled = PointPreprocessor(128, rotation_axis=None, scale_range=(2.0, 2.0), jitter=0.0)
    assert doubled.train_batch([box])[0].norm(dim=1).max() == pytest.approx(2.0, abs=1e-5)  # the scale applied
    assert doubled([box])[0].norm(dim=1).max() == pytest.approx(1.0, abs=1e-5)  # never at inference
    off = PointPreprocessor(128, augment=False, rotation_axis=None, scale_range=(2.0, 2.0), jitter=0.0)
    assert off.train_batch([box])[0].norm(dim=1).max() == pytest.approx(1.0, abs=1e-5)
    turned = PointPreprocessor(128, rotation_axis='z', scale_range=(1.0, 1.0), jitter=0.0)
    torch.manual_seed(3)
    view = turned.train_batch([box])[0]
    assert view[:, 0].abs().max() < 0.99 * view.norm(dim=1).max()  # the long x axis no longer lies along x


def test_fit_draws_its_batches_through_the_training_preprocessing(monkeypatch):
    calls = []
    original = PointNetBackbone.preprocess_train

    def spy(self, items):
        calls.append(len(items))
        return original(self, items)
    monkeypatch.setattr(PointNetBackbone, 'preprocess_train', spy)
    rows = [(trimesh.creation.box(extents=(1 + i % 3, 1, 1)), f'c{i % 2}') for i in range(8)]
    finetune.fit(tiny(), rows, epochs=1, batch_size=4, num_workers=0, progress=False, log=lambda m: None)
    assert calls == [4, 4]


# ---------------------------------------------------------------- encodings and file checks
TETRAHEDRON = ([(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)], [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)])


def _latin1_files(root) -> dict[str, bytes]:
    """One tetrahedron per text format, each with a Latin-1 byte (a comment or name 'café')."""
    vertices, faces = TETRAHEDRON
    v = ''.join(f'{x} {y} {z}\n' for x, y, z in vertices)
    files = {
        'obj': b'# caf\xe9\n' + ''.join(f'v {x} {y} {z}\n' for x, y, z in vertices).encode()
        + ''.join(f'f {a + 1} {b + 1} {c + 1}\n' for a, b, c in faces).encode(),
        'off': b'OFF\n# caf\xe9\n4 4 0\n' + v.encode() + ''.join(f'3 {a} {b} {c}\n' for a, b, c in faces).encode(),
        'ply': b'ply\nformat ascii 1.0\ncomment caf\xe9\nelement vertex 4\nproperty float x\nproperty float y\n'
               b'property float z\nelement face 4\nproperty list uchar int vertex_indices\nend_header\n'
               + v.encode() + ''.join(f'3 {a} {b} {c}\n' for a, b, c in faces).encode(),
        'stl': b'solid caf\xe9\n' + b''.join(
            b'facet normal 0 0 0\nouter loop\n' + b''.join(f'vertex {x} {y} {z}\n'.encode() for x, y, z in
                                                          (vertices[i] for i in face)) + b'endloop\nendfacet\n'
            for face in faces) + b'endsolid caf\xe9\n',
    }
    for ext, content in files.items():
        (root / f'tetra.{ext}').write_bytes(content)
    return files


def test_mesh_files_that_are_not_utf8_load(tmp_path):
    _latin1_files(tmp_path)
    for ext in ('obj', 'off', 'ply', 'stl'):
        shape = read_shape(str(tmp_path / f'tetra.{ext}'))
        assert shape.cumulative_area[-1] == pytest.approx(1.5 + 3 ** 0.5 / 2, rel=1e-6), ext


def test_file_check_reads_headers(tmp_path):
    from finetune_pointnet.points import mesh_file_problem
    trimesh.creation.box().export(tmp_path / 'box.glb')
    trimesh.creation.box().export(tmp_path / 'box.stl')
    np.save(tmp_path / 'cloud.npy', np.zeros((5, 3)))
    (tmp_path / 'cloud.xyz').write_text('0 0 0\n1 1 1\n')
    for good in ('box.glb', 'box.stl', 'cloud.npy', 'cloud.xyz'):
        assert mesh_file_problem(str(tmp_path / good)) is None, good
    (tmp_path / 'bad.off').write_text('not an off file\n')
    (tmp_path / 'bad.ply').write_text('hello\n')
    (tmp_path / 'bad.glb').write_bytes(b'\x00' * 20)
    (tmp_path / 'bad.stl').write_bytes(b'\x00' * 80 + (7).to_bytes(4, 'little') + b'\x00' * 10)
    (tmp_path / 'bad.npy').write_bytes(b'not numpy')
    (tmp_path / 'bad.xyz').write_text('x y z\n')
    (tmp_path / 'empty.obj').write_bytes(b'')
    problems = {name: mesh_file_problem(str(tmp_path / name)) for name in
                ('bad.off', 'bad.ply', 'bad.glb', 'bad.stl', 'bad.npy', 'bad.xyz', 'empty.obj', 'missing.obj')}
    assert problems == {'bad.off': 'has no OFF header', 'bad.ply': "has no 'ply' header",
                        'bad.glb': "has no binary glTF ('glTF') header",
                        'bad.stl': 'is not ASCII STL and its size does not fit binary STL (7 triangles announced)',
                        'bad.npy': 'is not a .npy file (no NumPy header)',
                        'bad.xyz': "does not start with x y z numbers (first line 'x y z')",
                        'empty.obj': 'is empty', 'missing.obj': 'does not exist'}


def test_fit_reports_broken_meshes_before_training(tmp_path):
    _write_class_folders(tmp_path)
    (tmp_path / 'balls' / '1.off').write_text('garbage\n')
    with pytest.raises(InputError, match=r"1 of 6 files cannot be used:\n  .*, row 1: '.*balls/1.off' has no OFF "
                                         r'header'):
        finetune.fit(tiny(), str(tmp_path), batch_size=4, num_workers=0, log=lambda m: None)


def test_gradcache_on_pointnet_equals_the_chunked_graph():
    """PointNet++ (BatchNorm, random point sampling) under GradCache: gradients and running statistics equal a
    forward of the same chunks with a graph, from the same random state."""
    from finetune.data.kinds import get_kind
    from finetune.losses import build_loss
    from finetune.training.module import TrainingModule
    from test_gradcache import _cached, _chunked_reference, _grads

    torch.manual_seed(0)
    module = TrainingModule(tiny(), build_loss('InfoNCE', None, 'pairs'), get_kind('pairs'))
    module.train()
    meshes = shapes()
    rows = [(meshes[i], meshes[(i + 1) % 4], i) for i in range(4)]
    batch = get_kind('pairs').collate(rows, module.model.preprocess_for_training, module.model.preprocess)
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    torch.manual_seed(1)
    _chunked_reference(module, batch, 2)
    expected, expected_state = _grads(module), {k: v.clone() for k, v in module.state_dict().items()}
    module.load_state_dict(initial)
    module.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    _cached(module, batch, 2)
    got = _grads(module)
    assert got.keys() == expected.keys() and got
    for name in got:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)
    for name, value in module.state_dict().items():
        torch.testing.assert_close(value, expected_state[name], msg=name)


def test_a_run_with_its_default_loader_worker_resumes_exactly(tmp_path):
    """PointNet++ samples fresh points and augments them in a DataLoader worker (its default on a CPU: one or
    more); a run resumed mid-epoch, with its default workers or two, ends with the uninterrupted run's weights."""
    rows = [(mesh, f'c{i % 3}') for i, mesh in enumerate(shapes() * 3)]  # 12 rows: 3 batches of 4 an epoch
    settings = dict(epochs=2, batch_size=4, device='cpu', precision='fp32', seed=2, progress=False,
                    log=lambda m: None)
    full = finetune.fit(tiny(), rows, output_dir=str(tmp_path / 'full'), save_steps=1, save_total_limit=10,
                        **settings)
    assert full.config['num_workers'] is None  # the family's default, at least one worker here
    final = full.model.state_dict()
    for step, workers in ((1, None), (4, 2)):  # mid first epoch; mid second epoch with two workers
        resumed = finetune.fit(None, rows, resume_from=str(tmp_path / 'full' / f'checkpoint-{step}'),
                               output_dir=str(tmp_path / f'resumed-{step}'), num_workers=workers, log=lambda m: None)
        state = resumed.model.state_dict()
        assert state.keys() == final.keys()
        assert all(torch.equal(state[k], final[k]) for k in final), step
