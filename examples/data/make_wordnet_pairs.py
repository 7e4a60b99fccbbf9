"""How wordnet_train.csv, wordnet_eval.csv, wordnet_test.csv, wordnet_verbs_guard.csv and wordnet_labels_*.csv were made
(kept for provenance; the CSVs are shipped).

Source: WordNet 3.0, from Debian's `wordnet-base` package (`apt-get download wordnet-base` and `dpkg -x` it;
the data files are usr/share/wordnet/data.noun and data.verb). Each row pairs a synset's definition (query)
with its words (doc), e.g. "a domesticated carnivorous mammal ..." -> "dog, domestic dog". Noun synsets are
shuffled with a fixed seed and split so that no synset is in two of the train, eval and test files (the eval
file chooses the epoch and WiSE-FT's alpha; the test file chooses nothing, for an honest "after"); 600 verb
synsets are the guard set (another part of speech, which fine-tuning on nouns should not make worse). The same
noun synsets, as labeled texts, make wordnet_labels_{train,eval,test}.csv: a synset's words labeled by its
lexicographer file (noun.animal, noun.artifact, ...), a second dataset for the same run (benchmarks/bench_several.py).

    python examples/data/make_wordnet_pairs.py /path/to/data.noun /path/to/data.verb
"""
from __future__ import annotations

import csv
import os
import random
import sys


#: WordNet's lexicographer files of nouns (lex_filenum 3 to 28)
NOUN_FILES = ('Tops act animal artifact attribute body cognition communication event feeling food group location '
              'motive object person phenomenon plant possession process quantity relation shape state substance '
              'time').split()


def synsets(path: str):
    with open(path, encoding='utf-8') as f:
        for line in f:
            if line.startswith('  '):
                continue  # licence header
            head, _, gloss = line.partition(' | ')
            fields = head.split()
            count = int(fields[3], 16)
            words = [fields[4 + 2 * i].replace('_', ' ') for i in range(count)]
            words = [w.split('(')[0] for w in words]
            definition = gloss.split(';')[0].strip()
            if 25 <= len(definition) <= 160 and words:
                category = f'noun.{NOUN_FILES[int(fields[1]) - 3]}' if 3 <= int(fields[1]) <= 28 else ''
                yield definition, ', '.join(dict.fromkeys(words)), category


def main(path: str, verbs: str | None = None, train_size: int = 3000, eval_size: int = 600, seed: int = 0) -> None:
    rows = list(synsets(path))
    random.Random(seed).shuffle(rows)
    here = os.path.dirname(os.path.abspath(__file__))
    test_start = train_size + eval_size
    parts = [('wordnet_train.csv', rows[:train_size]), ('wordnet_eval.csv', rows[train_size:test_start]),
             ('wordnet_test.csv', rows[test_start:test_start + eval_size])]
    if verbs:
        verb_rows = list(synsets(verbs))
        random.Random(seed).shuffle(verb_rows)
        parts.append(('wordnet_verbs_guard.csv', verb_rows[:eval_size]))
    for name, part in parts:
        with open(os.path.join(here, name), 'w', newline='', encoding='utf-8') as f:
            writer = csv.writer(f)
            writer.writerow(['query', 'doc'])
            writer.writerows(row[:2] for row in part)
        print(f'{name}: {len(part)} rows')
        if name.startswith('wordnet_') and 'verbs' not in name:  # the same synsets: words -> category
            labels = name.replace('wordnet_', 'wordnet_labels_')
            with open(os.path.join(here, labels), 'w', newline='', encoding='utf-8') as f:
                writer = csv.writer(f)
                writer.writerow(['item', 'label'])
                writer.writerows((words, category) for _, words, category in part)
            print(f'{labels}: {len(part)} rows')


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else '/usr/share/wordnet/data.noun', sys.argv[2] if len(sys.argv) > 2 else None)
