"""The data layer: every source and layout, kind detection, and errors that name the row or line."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from finetune.data import TrainingData, item_modality, load_data
from finetune.errors import InputError


def test_lists_of_rows_give_each_kind():
    labeled = load_data([('a dog', 'animal'), ('a cat', 'animal'), ('a car', 'vehicle'), ('a bus', 'vehicle')])
    assert (labeled.kind, labeled.groups, labeled.label_names) == ('labeled', [0, 0, 1, 1], ['animal', 'vehicle'])
    pairs = load_data([('what barks', 'a dog'), ('what meows', 'a cat'), ('what barks', 'a wolf')])
    assert pairs.kind == 'pairs' and pairs.groups == [0, 1, 0]  # rows sharing a query share a group
    scored = load_data([('a', 'b', 0.25), ('c', 'd', 1)])
    assert scored.kind == 'scored' and scored.scores == [0.25, 1.0]
    text_image = load_data([('x.jpg', 'a photo of a dog'), ('y.png', 'two cats on a sofa')])
    assert text_image.kind == 'text-image' and text_image.a[0] == 'a photo of a dog'  # text first
    assert load_data([{'text': 'a dog', 'label': 1}, {'text': 'a cat', 'label': 2}]).kind == 'labeled'
    assert load_data([('q1', 'd1'), ('q2', 'd2')], kind='labeled').kind == 'labeled'
    assert load_data(labeled) is labeled
    assert '4 labeled text items in 2 classes' in labeled.describe()


def test_csv_layouts_with_and_without_header(tmp_path):
    (tmp_path / 'labeled.csv').write_text('item,label\na dog,animal\na cat,animal\na car,vehicle\n')
    (tmp_path / 'plain.csv').write_text('a dog,animal\na cat,animal\na car,vehicle\na bus,vehicle\n')
    (tmp_path / 'scored.csv').write_text('a,b,score\nx,y,0.5\nz,w,0.1\n')
    Image.new('RGB', (8, 8)).save(tmp_path / 'dog.png')
    (tmp_path / 'captions.csv').write_text('text,image\na dog on grass,dog.png\n')
    assert load_data(str(tmp_path / 'labeled.csv')).kind == 'labeled'
    assert len(load_data(str(tmp_path / 'plain.csv'))) == 4  # no header: every row is data
    assert load_data(str(tmp_path / 'scored.csv')).kind == 'scored'
    captions = load_data(str(tmp_path / 'captions.csv'))
    assert captions.kind == 'text-image' and captions.b[0] == str(tmp_path / 'dog.png')  # resolved path
    (tmp_path / 'tabbed.tsv').write_text('query\tdoc\nwhat barks\ta dog\nwhat meows\ta cat\n')
    assert load_data(str(tmp_path / 'tabbed.tsv')).kind == 'pairs'


@pytest.mark.parametrize('content, message', [
    ('item,label\na dog,animal\na cat\n', r'bad.csv, line 3: 1 columns, expected 2'),
    ('a,b,score\nx,y,0.5\nz,w,1.5\n', r"bad.csv, line 3: score '1.5' is not a number in \[0, 1\]"),
    ('a,b,score\nx,y,0.5\nz,w,high\n', r"line 3: score 'high'"),
    ('item,label\na dog,\n', r'line 2: column 2 is empty'),
    ('', r'bad.csv is empty'),
    ('item,label\n', r'a header and no rows'),
    ('a,b,c,d\n1,2,3,4\n', r'line 1: 4 columns; expected 2'),
])
def test_bad_csv_says_which_line(tmp_path, content, message):
    path = tmp_path / 'bad.csv'
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_data(str(path))


def test_unreadable_sources(tmp_path):
    (tmp_path / 'latin1.csv').write_bytes('caf\xe9,drink\n'.encode('latin-1'))
    with pytest.raises(InputError, match='not UTF-8'):
        load_data(str(tmp_path / 'latin1.csv'))
    with pytest.raises(InputError, match="train_data: '.*missing.csv' does not exist"):
        load_data(str(tmp_path / 'missing.csv'))
    (tmp_path / 'data.json').write_text('{}')
    with pytest.raises(InputError, match='is not a CSV file'):
        load_data(str(tmp_path / 'data.json'))


def test_image_folder_with_one_subfolder_per_class(tmp_path):
    for cls in ('cats', 'dogs'):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new('RGB', (8, 8), (i * 100, 0, 0)).save(tmp_path / cls / f'{i}.png')
    (tmp_path / 'dogs' / 'notes.txt').write_text('not an image')
    data = load_data(str(tmp_path))
    assert data.kind == 'labeled' and len(data) == 4 and data.label_names == ['cats', 'dogs']
    empty = tmp_path / 'empty'
    (empty / 'nothing').mkdir(parents=True)
    with pytest.raises(InputError, match='one sub-folder per class'):
        load_data(str(empty))


def test_hugging_face_datasets():
    import datasets
    scored = datasets.Dataset.from_dict({'sentence1': ['a', 'b'], 'sentence2': ['c', 'd'], 'score': [0.1, 0.9]})
    assert load_data(scored).kind == 'scored'
    labeled = datasets.Dataset.from_dict({'text': ['a dog', 'a cat'], 'label': [0, 1]})
    assert load_data(labeled).kind == 'labeled'
    wide = datasets.Dataset.from_dict({'a': [1], 'b': [2], 'c': [3], 'd': [4]})
    with pytest.raises(InputError, match='select_columns'):
        load_data(wide)


def test_a_dataset_dict_is_refused_with_the_split_to_pass():
    import datasets
    split = datasets.Dataset.from_dict({'text': ['a dog', 'a cat'], 'label': [0, 1]})
    splits = datasets.DatasetDict({'train': split, 'test': split})
    with pytest.raises(InputError, match=r"train_data: a datasets.DatasetDict with splits 'train', 'test'; pass one "
                                         r"split, e.g. data\['train'\]"):
        load_data(splits)
    with pytest.raises(InputError, match=r"eval_data: .* pass one split, e.g. data\['test'\]"):
        load_data(splits, 'eval_data')


def test_numpy_arrays_of_rows_are_rows():
    import pandas as pd
    frame = pd.DataFrame({'query': ['what barks', 'what meows', 'what barks'], 'doc': ['a dog', 'a cat', 'a wolf']})
    rows = load_data(frame.values)
    assert rows.kind == 'pairs' and rows.a == list(frame['query']) and rows.b == list(frame['doc'])
    scored = load_data(np.array([['a', 'b', 0.5], ['c', 'd', 1.0]], dtype=object))
    assert scored.kind == 'scored' and scored.scores == [0.5, 1.0]
    assert load_data(np.array([['a dog', 'dog'], ['a cat', 'cat']])).a == ['a dog', 'a cat']  # dtype str
    with pytest.raises(InputError, match=r'train_data: a 3-D array of shape \(1, 2, 2\); expected a 2-D array of rows'):
        load_data(np.array([[['a', 'b'], ['c', 'd']]]))


@pytest.mark.parametrize('data, message', [
    ([], 'train_data is empty'),
    (None, 'train_data: no data given'),
    ({'a': 1}, 'got a dict'),
    (['just', 'strings'], "train_data, row 0: 'just' is not a row"),
    ([('a', 'b'), ('c', 'd', 0.5)], 'row 1: 3 columns, expected 2'),
    (42, 'cannot read int'),
])
def test_bad_in_memory_data(data, message):
    with pytest.raises(InputError, match=message):
        load_data(data)


def test_item_modality():
    assert item_modality('a sentence') == 'text'
    assert item_modality('photo.JPG') == 'image'
    assert item_modality('bunny.off') == 'mesh'
    assert item_modality(Image.new('RGB', (4, 4))) == 'image'
    assert item_modality(np.zeros((32, 32, 3))) == 'image'
    assert item_modality(np.zeros((2048, 3))) == 'mesh'
    assert item_modality(np.zeros(5)) == 'other'
    assert item_modality(7) == 'other'
    assert isinstance(load_data([('bunny.off', 'rabbit'), ('cow.off', 'cow')]), TrainingData)


def test_a_label_column_first_is_read_as_labels(tmp_path):
    from finetune.data import load_data
    path = tmp_path / 'flipped.csv'
    path.write_text('label,text\nanimal,a dog runs\nanimal,a cat sleeps\nfood,fresh bread\nfood,hot soup\n')
    data = load_data(str(path))
    assert data.kind == 'labeled'
    assert data.a == ['a dog runs', 'a cat sleeps', 'fresh bread', 'hot soup']
    assert data.label_names == ['animal', 'food'] and data.groups == [0, 0, 1, 1]
    rows = load_data([{'category': 'x', 'sentence': 'one'}, {'category': 'y', 'sentence': 'two'}])
    assert rows.kind == 'labeled' and rows.a == ['one', 'two']


def test_read_items_for_encoding(tmp_path):
    from finetune.data.loading import read_items
    (tmp_path / 'a.csv').write_text('\ufefflabel,text\nanimal,a dog\nfood,bread\n', encoding='utf-8')
    assert read_items(str(tmp_path / 'a.csv')) == ['a dog', 'bread']
    (tmp_path / 'b.csv').write_text('title\nsecond line\n')  # a lone word that is no header is an item
    assert read_items(str(tmp_path / 'b.csv')) == ['title', 'second line']
    (tmp_path / 'c.txt').write_text('pics/cat.jpg\n\n/abs/dog.png\nplain text\n')
    assert read_items(str(tmp_path / 'c.txt')) == [str(tmp_path / 'pics' / 'cat.jpg'), '/abs/dog.png', 'plain text']
    (tmp_path / 'empty.csv').write_text('item\n')
    with pytest.raises(InputError, match='holds no items'):
        read_items(str(tmp_path / 'empty.csv'))
    with pytest.raises(InputError, match='cannot read'):
        read_items(str(tmp_path / 'missing.txt'))


def test_a_new_format_is_one_reader(tmp_path):
    """A reader registered before the catch-all 'rows' reader reads its sources; the rest is load_data's."""
    from finetune.data import readers
    from finetune.data.readers import Reader, Table, reader_names, register_reader

    class Lines:  # a source of its own: 'query => doc' lines
        def __init__(self, text):
            self.text = text

        def __iter__(self):
            return iter(self.text.splitlines())

    class LinesReader(Reader):
        name = 'test-lines'

        def accepts(self, source):
            return isinstance(source, Lines)

        def read(self, source, name, delimiter=','):
            return Table([line.split(' => ') for line in source], f'{name} (lines)')

    saved = dict(readers._READERS)
    try:
        register_reader(LinesReader(), before='rows')
        assert reader_names()[-2:] == ('test-lines', 'rows')
        data = load_data(Lines('what barks => a dog\nwhat meows => a cat'))
        assert (data.kind, data.a, data.source) == ('pairs', ['what barks', 'what meows'], 'train_data (lines)')
        with pytest.raises(InputError, match="no reader named 'nope'"):
            register_reader(LinesReader(), before='nope')
    finally:
        readers._READERS.clear()
        readers._READERS.update(saved)
    assert 'test-lines' not in reader_names()
