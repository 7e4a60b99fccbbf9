"""The data layer as users meet it: lists, CSV files in Jina's layouts, image folders and Hugging Face datasets
become one TrainingData with the right kind, groups and label names; every mistake is an InputError that names
the input (or file), the row or line, and what was expected."""
from __future__ import annotations

import os
import pathlib
import re

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.data import KINDS, TrainingData, item_modality, load_data
from finetune.data.loading import from_hf_dataset, read_csv, read_image_folder
from finetune.errors import FinetuneError, InputError
from finetune.data.batches import Collator, RowsDataset


def raises(match: str, data, **kwargs) -> str:
    """load_data(data) raises an InputError whose message contains `match` (literally); the message."""
    with pytest.raises(InputError) as info:
        load_data(data, **kwargs)
    message = str(info.value)
    assert match in message, message
    return message


def write_png(path, colour=(200, 30, 30), size=(8, 6)) -> str:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, colour).save(path)
    return str(path)


# ---------------------------------------------------------------- in-memory lists
def test_item_label_rows_are_labeled_with_groups_and_label_names_in_first_seen_order():
    rows = [('a zebra', 'wild'), ('a cow', 'farm'), ('a lion', 'wild'), ('a cat', 'pet'), ('a pig', 'farm'),
            ('a dog', 'pet')]
    data = load_data(rows)
    assert data.kind == 'labeled'
    assert data.a == [r[0] for r in rows]
    assert data.b is None and data.scores is None
    assert data.label_names == ['wild', 'farm', 'pet']  # first seen, not sorted
    assert data.groups == [0, 1, 0, 2, 1, 2]
    assert [data.label_names[g] for g in data.groups] == [r[1] for r in rows]
    assert data.source == 'train_data' and len(data) == 6
    assert data.modalities == ('text',)


def test_numeric_labels_are_labels_even_when_each_occurs_once():
    data = load_data([('a dog', 7), ('a cat', 3), ('a cow', 7.5)])
    assert data.kind == 'labeled'
    assert data.label_names == [7, 3, 7.5] and data.groups == [0, 1, 2]
    ints = load_data([('x', 1), ('y', 0), ('z', 1), ('w', 0)])
    assert ints.kind == 'labeled' and ints.groups == [0, 1, 0, 1] and ints.label_names == [1, 0]
    vectors = load_data([(np.full(4, i, dtype=np.float32), label) for i, label in enumerate([5, 6, 7])])
    assert vectors.kind == 'labeled' and vectors.label_names == [5, 6, 7]  # 1-D features beside numbers


def test_query_doc_rows_with_repeating_queries_are_pairs_grouped_by_query():
    rows = [('what barks', 'a dog'), ('what meows', 'a cat'), ('what barks', 'a wolf'), ('what moos', 'a cow'),
            ('what meows', 'a lynx')]
    data = load_data(rows)
    assert data.kind == 'pairs'
    assert data.a == [r[0] for r in rows] and data.b == [r[1] for r in rows]
    assert data.groups == [0, 1, 0, 2, 1]
    assert data.label_names == ['what barks', 'what meows', 'what moos']
    for i in range(len(rows)):  # rows share a group exactly when they share a query
        for j in range(len(rows)):
            assert (data.groups[i] == data.groups[j]) == (rows[i][0] == rows[j][0])
    assert data.modalities == ('text', 'text')


def test_a_b_score_rows_are_scored():
    data = load_data([('a dog', 'a puppy', 0.9), ('a dog', 'a car', 0), ('a car', 'a bus', '0.5'), ('x', 'y', 1)])
    assert data.kind == 'scored'
    assert data.scores == [0.9, 0.0, 0.5, 1.0] and all(isinstance(s, float) for s in data.scores)
    assert data.a == ['a dog', 'a dog', 'a car', 'x'] and data.b == ['a puppy', 'a car', 'a bus', 'y']
    assert data.groups == [0, 0, 1, 2]


def test_list_of_dicts_uses_the_keys_as_header_names():
    # as tuples, a repeating second column reads as labels; the 'doc' key says these are documents
    rows = [('what barks', 'an animal'), ('what meows', 'an animal'), ('what purrs', 'an animal')]
    assert load_data(rows).kind == 'labeled'
    data = load_data([{'query': q, 'doc': d} for q, d in rows])
    assert data.kind == 'pairs' and data.b == ['an animal'] * 3 and data.groups == [0, 1, 2]
    # and a 'label' key makes labels of values that never repeat
    labeled = load_data([{'text': 'a dog', 'label': 'dog'}, {'text': 'a cat', 'label': 'cat'}])
    assert labeled.kind == 'labeled' and labeled.label_names == ['dog', 'cat']
    scored = load_data([{'sentence1': 'a', 'sentence2': 'b', 'score': 0.2}])
    assert scored.kind == 'scored' and scored.scores == [0.2]


def test_text_beside_image_paths_is_text_image_with_text_first():
    texts = ['a dog on grass', 'two cats on a sofa', 'a red car']
    images = ['img/dog.jpg', 'img/cats.PNG', 'img/car.webp']
    for rows in (list(zip(texts, images)), list(zip(images, texts))):  # either column order
        data = load_data(rows)
        assert data.kind == 'text-image'
        assert data.a == texts and data.b == images
        assert data.modalities == ('text', 'image')
        assert data.groups == [0, 1, 2] and data.label_names == texts
    as_dicts = load_data([{'image': i, 'caption': t} for t, i in zip(texts, images)])
    assert as_dicts.kind == 'text-image' and as_dicts.a == texts and as_dicts.b == images


def test_several_captions_of_one_image_stay_text_image():
    # COCO style: each image has several captions, so the image column repeats; images are not labels
    rows = [('a cat on a mat', 'cat.jpg'), ('a sleepy cat', 'cat.jpg'), ('the cat', 'cat.jpg'),
            ('a dog', 'dog.jpg'), ('a dog runs', 'dog.jpg'), ('good dog', 'dog.jpg')]
    for data in (load_data(rows), load_data([(i, t) for t, i in rows])):
        assert data.kind == 'text-image'
        assert data.a == [t for t, _ in rows] and data.b == [i for _, i in rows]


def test_images_with_text_labels_are_labeled():
    rows = [('cat1.jpg', 'cat'), ('cat2.jpg', 'cat'), ('dog1.jpg', 'dog'), ('dog2.jpg', 'dog')]
    data = load_data(rows)
    assert data.kind == 'labeled' and data.label_names == ['cat', 'dog'] and data.modalities == ('image',)


def test_image_files_with_few_repeating_labels_are_labeled_and_errors_name_the_image_column(tmp_path):
    labels = ['cat', 'dog', 'cat', 'bird', 'fish', 'dog']  # 6 rows, 4 labels: too few repeats to count alone
    rows = [(write_png(tmp_path / f'im{i}.png', (30 * i, 0, 0)), label) for i, label in enumerate(labels)]
    data = load_data(rows)
    assert data.kind == 'labeled' and data.label_names == ['cat', 'dog', 'bird', 'fish']
    assert data.modalities == ('image',) and data.a == [path for path, _ in rows]
    sentences = [(path, f'a photo number {i} of a {label}') for i, (path, label) in enumerate(rows)]
    assert load_data(sentences).kind == 'text-image'  # captions: sentences, not names
    import finetune
    captions = [(path, f'a {label} here') for path, label in rows[1:4]]  # image files first, captions second
    with pytest.raises(InputError, match="the image column holds image items but 'fake-text' is a text model"):
        finetune.evaluate(finetune.build_model('fake-text'), captions)


def test_unhashable_labels_are_refused_naming_the_row_not_told_apart_by_identity():
    message = raises('train_data, row 0: the label [1] is a list, which cannot name a class',
                     [('a dog', [1]), ('a cat', [1]), ('a car', [2])])
    assert 'for one value, give it alone: 1' in message
    raises("row 1: the label {'k': 2} is a dict", [('a dog', 1), ('a cat', {'k': 2})], kind='labeled')
    assert load_data([('a dog', (1,)), ('a cat', (1,)), ('a car', (2,))]).groups == [0, 0, 1]  # tuples are values


def test_image_arrays_and_pil_images_are_items():
    arrays = [np.full((8, 8, 3), i, dtype=np.uint8) for i in range(4)]
    data = load_data([(arr, i % 2) for i, arr in enumerate(arrays)])
    assert data.kind == 'labeled' and data.groups == [0, 1, 0, 1] and data.a[2] is arrays[2]
    pil = [Image.new('RGB', (4, 4), (i, 0, 0)) for i in range(2)]
    captions = load_data([(pil[0], 'a black square'), (pil[1], 'another square')])
    assert captions.kind == 'text-image' and captions.a == ['a black square', 'another square']
    assert captions.b[0] is pil[0]


def test_kind_override():
    labeled_looking = [('q1', 'd'), ('q2', 'd'), ('q1', 'e'), ('q3', 'd')]
    assert load_data(labeled_looking).kind == 'labeled'
    pairs = load_data(labeled_looking, kind='pairs')
    assert pairs.kind == 'pairs' and pairs.b == ['d', 'd', 'e', 'd'] and pairs.groups == [0, 1, 0, 2]
    pairs_looking = [('what barks', 'a dog'), ('what meows', 'a cat')]
    assert load_data(pairs_looking).kind == 'pairs'
    labeled = load_data(pairs_looking, kind='labeled')
    assert labeled.kind == 'labeled' and labeled.b is None and labeled.label_names == ['a dog', 'a cat']
    swapped = load_data([('x.png', 'a photo'), ('y.png', 'a drawing')], kind='text-image')
    assert swapped.a == ['a photo', 'a drawing'] and swapped.b == ['x.png', 'y.png']
    raises("unknown data kind 'clusters'; expected one of labeled, pairs, scored, text-image", pairs_looking,
           kind='clusters')
    raises('scored data needs 3 columns (a, b, score), got 2', pairs_looking, kind='scored')
    # a score column is not silently used for another kind
    message = raises("kind='pairs' takes 2 columns, got 3", [('a', 'b', 0.5), ('c', 'd', 0.1)], kind='pairs')
    assert message.startswith('train_data')
    raises("kind='labeled' takes 2 columns, got 3", [('a', 'b', 0.5)], kind='labeled')


def test_training_data_passes_through_unchanged():
    data = load_data([('a', 'x'), ('b', 'x')])
    assert load_data(data) is data
    assert load_data(data, name='eval_data', kind='pairs') is data
    made = TrainingData('pairs', ['q'], ['d'], [0], label_names=['q'], source='mine')
    assert load_data(made) is made


def test_describe_one_liners_have_the_counts():
    labeled = load_data([('a', 'x'), ('b', 'y'), ('c', 'x'), ('d', 'z'), ('e', 'x'), ('f', 'y')])
    assert labeled.describe() == 'train_data: 6 labeled text items in 3 classes'
    pairs = load_data([('q1', 'd1'), ('q2', 'd2'), ('q1', 'd3')], name='eval_data')
    assert pairs.describe() == 'eval_data: 3 pairs rows (text/text), 2 distinct queries'
    scored = load_data([('a', 'b', 0.25), ('c', 'd', 0.75), ('e', 'f', 0.5)])
    assert scored.describe() == 'train_data: 3 scored text/text pairs (score 0.25..0.75)'
    text_image = load_data([('a.jpg', 'one'), ('b.jpg', 'two')])
    assert text_image.describe() == 'train_data: 2 text-image rows (text/image), 2 distinct queries'
    many = load_data([(f'item {i}', i % 3) for i in range(1234)])
    assert '1,234 labeled' in many.describe() and '3 classes' in many.describe()
    assert set(KINDS) == {'labeled', 'pairs', 'scored', 'text-image', 'margin-triplets'}


def test_rows_feed_the_training_collator():
    """What fit() does with each kind: RowsDataset rows, collated into tensors of group ids / scores."""
    upper = lambda items: [str(x).upper() for x in items]  # noqa: E731
    labeled = load_data([('a', 'x'), ('b', 'y'), ('c', 'x'), ('d', 'y')])
    assert RowsDataset(labeled)[2] == ('c', 0)
    batch = Collator('labeled', upper, None)([RowsDataset(labeled)[i] for i in range(4)])
    assert batch['a'] == ['A', 'B', 'C', 'D'] and batch['groups'].tolist() == [0, 1, 0, 1]
    assert batch['groups'].dtype == torch.long
    scored = load_data([('a', 'b', 0.25), ('c', 'd', 1)])
    assert RowsDataset(scored)[1] == ('c', 'd', 1.0)
    batch = Collator('scored', upper, upper)([RowsDataset(scored)[i] for i in range(2)])
    assert batch['b'] == ['B', 'D'] and batch['scores'].tolist() == [0.25, 1.0]
    pairs = load_data([('q1', 'd1'), ('q2', 'd2'), ('q1', 'd3')])
    assert [RowsDataset(pairs)[i] for i in range(3)] == [('q1', 'd1', 0), ('q2', 'd2', 1), ('q1', 'd3', 0)]


# ---------------------------------------------------------------- CSV files
def test_csv_item_label_with_and_without_header(tmp_path):
    body = 'a photo of a dog,dog\na photo of a cat,cat\nanother dog,dog\n"a cat, sleeping",cat\n'
    (tmp_path / 'with_header.csv').write_text('item,label\n' + body)
    (tmp_path / 'no_header.csv').write_text(body)
    for name in ('with_header.csv', 'no_header.csv'):
        data = load_data(str(tmp_path / name))
        assert data.kind == 'labeled', name
        assert data.a == ['a photo of a dog', 'a photo of a cat', 'another dog', 'a cat, sleeping'], name
        assert data.groups == [0, 1, 0, 1] and data.label_names == ['dog', 'cat'], name
        assert data.source == name
    # a header naming the label column makes labels even of values that never repeat
    (tmp_path / 'unique.csv').write_text('text,class\nx,1\ny,2\nz,3\n')
    assert load_data(tmp_path / 'unique.csv').kind == 'labeled'  # a pathlib.Path works too


def test_csv_query_doc_is_pairs(tmp_path):
    (tmp_path / 'qd.csv').write_text('query,doc\nwhat barks,a dog\nwhat meows,a cat\nwhat barks,a wolf\n')
    data = load_data(str(tmp_path / 'qd.csv'))
    assert data.kind == 'pairs'
    assert data.a == ['what barks', 'what meows', 'what barks'] and data.b == ['a dog', 'a cat', 'a wolf']
    assert data.groups == [0, 1, 0]


def test_csv_a_b_score_is_scored(tmp_path):
    (tmp_path / 'sts.csv').write_text('sentence1,sentence2,score\na man eats,a man is eating,0.95\n'
                                      'a dog runs,a car is red,0.05\nx,y,0\nu,v,1\n')
    data = load_data(str(tmp_path / 'sts.csv'))
    assert data.kind == 'scored' and len(data) == 4
    assert data.scores == [0.95, 0.05, 0.0, 1.0]
    assert data.a[0] == 'a man eats' and data.b[1] == 'a car is red'
    (tmp_path / 'noheader.csv').write_text('a,b,0.5\nc,d,0.25\n')
    assert load_data(str(tmp_path / 'noheader.csv')).scores == [0.5, 0.25]  # '0.5' is no header name


def test_csv_text_image_resolves_relative_paths_against_the_csv_folder(tmp_path, monkeypatch):
    folder = tmp_path / 'set'
    dog = write_png(folder / 'images' / 'dog.png')
    cat = write_png(tmp_path / 'elsewhere' / 'cat.png')
    (folder / 'captions.csv').write_text(f'text,image\na dog on grass,images/dog.png\na cat,{cat}\n')
    (folder / 'swapped.csv').write_text('image,caption\nimages/dog.png,a dog on grass\n')
    monkeypatch.chdir(tmp_path)  # not the CSV's folder
    data = load_data(os.path.join('set', 'captions.csv'))
    assert data.kind == 'text-image'
    assert data.a == ['a dog on grass', 'a cat']
    assert data.b == [dog, cat]  # relative -> the CSV's folder; absolute unchanged
    assert os.path.isabs(data.b[0]) and os.path.isfile(data.b[0])
    assert data.modalities == ('text', 'image')
    swapped = load_data(str(folder / 'swapped.csv'))
    assert swapped.kind == 'text-image' and swapped.a == ['a dog on grass'] and swapped.b == [dog]


def test_tsv_is_tab_separated(tmp_path):
    (tmp_path / 'qd.tsv').write_text('query\tdoc\nhello, world\ta greeting, friendly\nwhat meows\ta cat\n')
    data = load_data(str(tmp_path / 'qd.tsv'))
    assert data.kind == 'pairs'
    assert data.a == ['hello, world', 'what meows'] and data.b == ['a greeting, friendly', 'a cat']
    assert read_csv(str(tmp_path / 'qd.tsv'), delimiter='\t').a == data.a


def test_csv_blank_lines_and_surrounding_spaces_are_ignored(tmp_path):
    (tmp_path / 'spaced.csv').write_text('item , label\n\n a dog , animal \n\n\na car,vehicle\n   \n')
    data = load_data(str(tmp_path / 'spaced.csv'))
    assert data.kind == 'labeled' and data.a == ['a dog', 'a car'] and data.label_names == ['animal', 'vehicle']


def test_csv_written_by_excel_with_a_byte_order_mark(tmp_path):
    (tmp_path / 'excel.csv').write_bytes('item,label\r\na dog,animal\r\na cat,animal\r\n'.encode('utf-8-sig'))
    data = load_data(str(tmp_path / 'excel.csv'))
    assert data.kind == 'labeled' and data.a == ['a dog', 'a cat']  # the header is no data row


@pytest.mark.parametrize('content, where, what', [
    # a missing column: the header is line 1, so the 3rd data row is line 4
    ('item,label\na dog,animal\na cat,animal\na cow\n', 'bad.csv, line 4:', '1 columns, expected 2'),
    ('a dog,animal\na cat,animal\na cow\n', 'bad.csv, line 3:', '1 columns, expected 2'),
    ('a,b,score\nx,y,0.5\nz,w\n', 'bad.csv, line 3:', '2 columns, expected 3'),
    ('item,label\na dog,animal,extra\n', 'bad.csv, line 2:', '3 columns, expected 2 like the header'),
    ('text,label\nhello,greeting,0.9\nbye,greeting,0.8\n', 'bad.csv, line 2:', '3 columns, expected 2'),  # not scored
    # blank lines and a quoted cell over two lines still count as lines
    ('item,label\n\na dog,animal\n\na cow\n', 'bad.csv, line 5:', '1 columns'),
    ('item,label\n"a dog,\nbarking",animal\na cow\n', 'bad.csv, line 4:', '1 columns'),
    # empty cells: the line and the column
    ('item,label\na dog,animal\na cat,\n', 'bad.csv, line 3:', 'column 2 is empty'),
    ('query,doc\nwhat barks,a dog\n  ,a cat\n', 'bad.csv, line 3:', 'column 1 is empty'),
    ('a,b,score\nx,y,0.5\nz,w,\n', 'bad.csv, line 3:', 'column 3 is empty'),
    # scores
    ('a,b,score\nx,y,0.5\nz,w,1.5\n', 'bad.csv, line 3:', "score '1.5' is not a number in [0, 1]"),
    ('a,b,score\nx,y,-0.1\n', 'bad.csv, line 2:', "score '-0.1' is not a number in [0, 1]"),
    ('a,b,score\nx,y,0.5\nz,w,0.2\nu,v,high\n', 'bad.csv, line 4:', "score 'high' is not a number"),
    ('x,y,0.5\nz,w,nan\n', 'bad.csv, line 2:', "score 'nan' is not a number"),
    # too many columns from the start
    ('a,b,c,d\n1,2,3,4\n', 'bad.csv, line 1:', '4 columns; expected 2 (item, label'),
])
def test_bad_csv_names_the_file_and_line(tmp_path, content, where, what):
    (tmp_path / 'bad.csv').write_text(content)
    message = raises(where, str(tmp_path / 'bad.csv'))
    assert what in message


@pytest.mark.parametrize('content, what', [
    ('', 'is empty: expected rows such as item,label'),
    ('\n\n  \n', 'is empty: expected rows such as item,label'),
    ('item,label\n', 'a header and no rows'),
    ('a,b,score\n\n', 'a header and no rows'),
])
def test_csv_without_rows(tmp_path, content, what):
    (tmp_path / 'nothing.csv').write_text(content)
    message = raises(what, str(tmp_path / 'nothing.csv'))
    assert 'nothing.csv' in message


def test_unreadable_csv_files(tmp_path):
    (tmp_path / 'latin1.csv').write_bytes('a caf\xe9 au lait,drink\ntea,drink\n'.encode('latin-1'))
    message = raises('not UTF-8', str(tmp_path / 'latin1.csv'))
    assert 'latin1.csv' in message
    message = raises('does not exist', str(tmp_path / 'missing.csv'))
    assert message.startswith('train_data:') and 'missing.csv' in message and 'expected a CSV file' in message
    raises('eval_data:', str(tmp_path / 'missing.csv'), name='eval_data')
    (tmp_path / 'data.json').write_text('[["a", "b"]]')
    message = raises('is not a CSV file (.csv/.tsv) or a folder', str(tmp_path / 'data.json'))
    assert message.startswith('train_data:') and 'data.json' in message
    (tmp_path / 'huge.csv').write_text('q,d\nx,y\nz,' + 'w' * 200_000 + '\n')  # over csv's field size limit
    raises('huge.csv, line 3:', str(tmp_path / 'huge.csv'))


def test_read_csv_kind_and_header_arguments(tmp_path):
    (tmp_path / 'rows.csv').write_text('q1,d1\nq2,d1\nq3,d1\n')
    assert read_csv(str(tmp_path / 'rows.csv')).kind == 'labeled'
    assert read_csv(str(tmp_path / 'rows.csv'), kind='pairs').kind == 'pairs'
    assert load_data(str(tmp_path / 'rows.csv'), kind='pairs').b == ['d1'] * 3
    forced = read_csv(str(tmp_path / 'rows.csv'), header=True)  # first row as a header
    assert len(forced) == 2 and forced.a == ['q2', 'q3']
    (tmp_path / 'words.csv').write_text('text,label\nx,y\n')
    assert len(read_csv(str(tmp_path / 'words.csv'), header=False)) == 2


# ---------------------------------------------------------------- image folders
def test_image_folder_with_a_sub_folder_per_class(tmp_path):
    root = tmp_path / 'pets'
    files = {'dogs': ['b.png', 'a.png', 'c.PNG'], 'cats': ['x.png', 'y.png']}
    for cls, names in files.items():
        for k, name in enumerate(names):
            write_png(root / cls / name, colour=(k * 60, 100, 0))
    (root / 'dogs' / 'notes.txt').write_text('not an image')
    (root / 'birds').mkdir()  # a class folder without images is no class
    (root / 'readme.png').write_bytes(b'')  # a file beside the class folders is no class
    data = load_data(str(root))
    assert data.kind == 'labeled' and data.source == 'pets'
    assert data.label_names == ['cats', 'dogs']  # folder names, sorted
    assert len(data) == 5 and data.groups == [0, 0, 1, 1, 1]
    assert [os.path.basename(p) for p in data.a] == ['x.png', 'y.png', 'a.png', 'b.png', 'c.PNG']
    for path, group in zip(data.a, data.groups):
        assert os.path.basename(os.path.dirname(path)) == data.label_names[group]
        with Image.open(path) as img:
            assert img.size == (8, 6)
    assert data.modalities == ('image',)
    assert data.describe() == 'pets: 5 labeled image items in 2 classes'
    assert load_data(root).a == data.a  # a pathlib.Path too
    assert read_image_folder(str(root) + os.sep).source == 'pets'


def test_folder_without_images_is_an_input_error(tmp_path):
    (tmp_path / 'empty' / 'cats').mkdir(parents=True)
    (tmp_path / 'empty' / 'cats' / 'list.txt').write_text('cat.png\n')
    message = raises('expected one sub-folder per class holding images', str(tmp_path / 'empty'))
    assert str(tmp_path / 'empty') in message and '.png' in message
    flat = tmp_path / 'flat'
    write_png(flat / 'dog.png')  # images, but no class folders
    raises('expected one sub-folder per class', str(flat))
    (tmp_path / 'bare').mkdir()
    raises('found none', str(tmp_path / 'bare'))


# ---------------------------------------------------------------- Hugging Face datasets
def test_hugging_face_datasets():
    import datasets
    sts = datasets.Dataset.from_dict({'sentence1': ['a man eats', 'a dog runs', 'x'],
                                      'sentence2': ['a man is eating', 'a car is red', 'y'],
                                      'score': [0.9, 0.1, 0.5]})
    data = load_data(sts)
    assert data.kind == 'scored' and data.scores == pytest.approx([0.9, 0.1, 0.5])
    assert data.a == ['a man eats', 'a dog runs', 'x'] and data.b[1] == 'a car is red'
    assert data.source == 'datasets.Dataset(sentence1, sentence2, score)'

    labeled = load_data(datasets.Dataset.from_dict({'text': ['a dog', 'a cat', 'a pup'], 'label': [1, 0, 1]}))
    assert labeled.kind == 'labeled' and labeled.groups == [0, 1, 0] and labeled.label_names == [1, 0]
    assert labeled.a == ['a dog', 'a cat', 'a pup']

    qa = datasets.Dataset.from_dict({'question': ['q1', 'q2'], 'answer': ['same', 'same']})
    assert from_hf_dataset(qa).kind == 'pairs'  # named columns beat the repeat heuristic
    assert from_hf_dataset(qa, kind='labeled').kind == 'labeled'

    wide = datasets.Dataset.from_dict({'a': ['x'], 'b': ['y'], 'c': [0.5], 'd': [1]})
    with pytest.raises(InputError) as info:
        load_data(wide)
    assert "['a', 'b', 'c', 'd']" in str(info.value) and 'select_columns' in str(info.value)
    assert 'expected 2' in str(info.value)

    bad = datasets.Dataset.from_dict({'a': ['x', 'y'], 'b': ['u', 'v'], 'score': [0.5, 3.0]})
    message = raises('row 1: score 3.0 is not a number in [0, 1]', bad)
    assert message.startswith('datasets.Dataset(a, b, score)')


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize('data, expected', [
    ([], 'train_data is empty: expected rows such as (item, label)'),
    ((row for row in []), 'train_data is empty'),
    (None, 'train_data: no data given; expected a list of rows'),
    ({'text': ['a'], 'label': ['b']}, 'train_data: got a dict; pass a list of rows'),
    (['a dog', 'a cat'], "train_data, row 0: 'a dog' is not a row; expected tuples such as (item, label)"),
    ([('a', 'b'), 'c'], "train_data, row 1: 'c' is not a row"),
    ([('a', 'b', 'c', 'd')], 'train_data, row 0: 4 columns; expected 2 (item, label'),
    ([('lonely',)], 'train_data, row 0: 1 columns; expected 2'),
    ([('a', 'b'), ('c', 'd'), ('e', 'f', 0.5)], 'train_data, row 2: 3 columns, expected 2 like the first row'),
    ([('a', 'b', 0.5), ('c', 'd')], 'train_data, row 1: 2 columns, expected 3'),
    ([('a', 'x'), ('b', None)], 'train_data, row 1: column 2 is empty'),
    ([('', 'x')], 'train_data, row 0: column 1 is empty'),
    ([{'text': 'a', 'label': 'x'}, {'text': 'b'}], 'train_data, row 1: column 2 is empty'),
    ([('a', 'b', 1.5)], 'train_data, row 0: score 1.5 is not a number in [0, 1]'),
    ([('a', 'b', True)], 'train_data, row 0: score True is not a number'),
    ([('a', 'b', 'x')], "train_data, row 0: score 'x' is not a number"),
    ([('a', 'b', float('inf'))], 'train_data, row 0: score inf'),
    (42, 'train_data: cannot read int; expected a list of rows, a CSV path'),
])
def test_bad_inputs_name_the_input_and_what_was_expected(data, expected):
    with pytest.raises(InputError) as info:
        load_data(data)
    assert expected in str(info.value)
    assert isinstance(info.value, FinetuneError) and isinstance(info.value, ValueError)


def test_errors_name_the_given_input():
    message = raises('eval_data is empty', [], name='eval_data')
    assert 'train_data' not in message
    raises('eval_data, row 0:', ['text'], name='eval_data')
    raises('eval_data: no data given', None, name='eval_data')
    assert re.search(r'eval_data, row 1: 3 columns', raises('expected 2', [('a', 'b'), (1, 2, 3)],
                                                            name='eval_data'))


# ---------------------------------------------------------------- item_modality
@pytest.mark.parametrize('item, modality', [
    ('a photo of a dog', 'text'),
    ('', 'text'),
    ('photos/dog.jpg', 'image'),
    ('DOG.JPEG', 'image'),
    ('x.png', 'image'),
    ('scan.tiff', 'image'),
    ('anim.gif', 'image'),
    ('pic.webp', 'image'),
    ('a story about jpg files', 'text'),
    ('report.pdf', 'text'),
    (pathlib.Path('dog.png'), 'image'),
    (pathlib.Path('notes.txt'), 'other'),
    (np.zeros((32, 32), dtype=np.uint8), 'image'),
    (np.zeros((32, 32, 3), dtype=np.uint8), 'image'),
    (np.zeros((3, 224, 224), dtype=np.float32), 'image'),
    (np.zeros(5), 'other'),
    (np.zeros((2, 3, 4, 5)), 'other'),
    (torch.zeros(3, 16, 16), 'image'),
    (torch.zeros(8), 'other'),
    (7, 'other'),
    (3.5, 'other'),
    (None, 'other'),
    (('a', 'tuple'), 'other'),
])
def test_item_modality(item, modality):
    assert item_modality(item) == modality


def test_item_modality_of_pil_images():
    assert item_modality(Image.new('RGB', (4, 4))) == 'image'
    assert item_modality(Image.new('L', (4, 4))) == 'image'
    assert item_modality(Image.new('RGBA', (4, 4)).convert('RGB')) == 'image'


# ---------------------------------------------------------------- one kind per column, DataFrames, row lines

def test_an_image_path_among_text_rows_is_an_error_naming_the_row():
    rows = [('the red dog', 'a'), ('a blue cat', 'b'), ('photos/cat.jpg', 'b'), ('the old car', 'a')]
    with pytest.raises(InputError, match=r"train_data, row 2: the item column holds an image item \('photos/cat.jpg'\) "
                                         r"but the first row holds a text item"):
        load_data(rows)
    pairs = [('q one', 'doc one'), ('q two', 'doc.png'), ('q three', 'doc three')]
    with pytest.raises(InputError, match=r'row 1: the second column holds an image item'):
        load_data(pairs, kind='pairs')


def test_mixed_rows_in_a_csv_name_the_file_line(tmp_path):
    csv = tmp_path / 'data.csv'
    csv.write_text('text,label\nthe red dog,a\n\nthe blue cat,b\ncat.png,b\n')
    with pytest.raises(InputError, match=r'data.csv, line 5: the item column holds an image item'):
        load_data(str(csv))


def test_rows_remember_their_file_lines(tmp_path):
    csv = tmp_path / 'data.csv'
    csv.write_text('query,doc\nq1,d1\n\nq2,d2\n')
    data = load_data(str(csv))
    assert data.lines == [2, 4]
    assert data.where(1) == 'data.csv, line 4'
    assert load_data([('a', 'x'), ('b', 'y')]).where(1) == 'train_data, row 1'


def test_a_pandas_data_frame_is_rows_with_its_columns_as_header():
    pd = pytest.importorskip('pandas')
    frame = pd.DataFrame({'label': ['a', 'b', 'a'], 'text': ['the red dog', 'a cat', 'the old dog']})
    data = load_data(frame)
    assert data.kind == 'labeled' and data.a == ['the red dog', 'a cat', 'the old dog']  # label-first header
    assert data.label_names == ['a', 'b']
    scored = load_data(pd.DataFrame({'a': ['x', 'y'], 'b': ['z', 'w'], 'score': [0.2, 0.9]}))
    assert scored.kind == 'scored' and scored.scores == [0.2, 0.9]
    plain = load_data(pd.DataFrame([['q1', 'd1'], ['q2', 'd2']]))  # integer column names: no header
    assert plain.kind == 'pairs' and plain.a == ['q1', 'q2']
    with pytest.raises(InputError, match='Series'):
        load_data(frame['text'])
    with pytest.raises(InputError, match='has no rows'):
        load_data(frame.iloc[:0])
