"""Throughput and memory of `finetune.synthesize` on this CPU: a 100k-text corpus, all-MiniLM-L6-v2 as the
relation miner and a MiniLM-L6-size cross-encoder.

    python benchmarks/bench_synthesis.py [--corpus 100000] [--queries 1000] [--num-relations 3]

Corpus: WordNet 3.0 definitions (Debian's wordnet-base, `python benchmarks/realdata.py --fetch`), 10-160
characters, distinct. Queries: WordNet lemmas ('leaf', 'baleen whale', ...). No cross-encoder weights ship on
PyPI, so the scorer is all-MiniLM-L6-v2's network under an untrained one-logit head saved as a
BertForSequenceClassification folder: the architecture and cost of cross-encoder/ms-marco-MiniLM-L-6-v2
(crossencoder-base-en), not its judgement. Stage figures come from the run's `stats`; peak memory is the
process's maximum resident set size.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')

from finetune.training.hardware import cpu_name  # noqa: E402 - after the offline switch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import realdata  # noqa: E402


def wordnet_glosses(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(up to `n` distinct WordNet definitions of 10-160 characters, the first lemma of each synset)."""
    folder = realdata.fetch('wordnet')
    definitions, lemmas = {}, {}
    for part in ('noun', 'verb', 'adj', 'adv'):
        for fields, definition in realdata.wordnet_synsets(os.path.join(folder, f'data.{part}')):
            if 10 <= len(definition) <= 160:
                definitions.setdefault(definition, None)
                lemmas.setdefault(fields[4].replace('_', ' '), None)
    texts, words = list(definitions), list(lemmas)
    random.Random(seed).shuffle(texts)
    random.Random(seed).shuffle(words)
    return texts[:n], words


def minilm_size_cross_encoder(folder: str) -> str:
    """all-MiniLM-L6-v2's transformer under a new one-logit head, saved as a sequence-classification folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel
    from finetune_transformers.specs import packaged_minilm
    source = packaged_minilm()
    config = BertConfig.from_pretrained(source, num_labels=1)
    model = BertForSequenceClassification(config)
    model.bert.load_state_dict(BertModel.from_pretrained(source).state_dict(), strict=False)
    torch.manual_seed(0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def rss_mib() -> float:
    with open('/proc/self/status') as f:
        line = next(x for x in f if x.startswith('VmRSS'))
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--corpus', type=int, default=100_000)
    parser.add_argument('--queries', type=int, default=1000)
    parser.add_argument('--num-relations', type=int, default=3)
    args = parser.parse_args()
    import torch
    import finetune
    from finetune.data import SynthesisModels
    corpus, words = wordnet_glosses(args.corpus)
    queries = words[:args.queries]
    with tempfile.TemporaryDirectory() as tmp:
        scorer = minilm_size_cross_encoder(os.path.join(tmp, 'cross-encoder'))
        before = rss_mib()
        start = time.perf_counter()
        data = finetune.synthesize(queries, corpus, SynthesisModels('all-minilm-l6-v2', f'hf:{scorer}'),
                                   num_relations=args.num_relations, output=os.path.join(tmp, 'synth.jsonl'),
                                   progress=False, log=lambda m: None)
        total = time.perf_counter() - start
    s = data.stats
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f'CPU: {cpu_name()}, {torch.get_num_threads()} torch threads')
    print(f'corpus {s["corpus"]:,} texts (mean {sum(map(len, corpus)) / len(corpus):.0f} chars), {s["queries"]:,} '
          f'queries, {s["scored_pairs"]:,} pairs, {s["rows"]:,} rows, {total:.1f} s in all')
    print(f'encode corpus: {s["encode_seconds"]:.1f} s, {s["encode_per_second"]:,.0f} texts/s')
    print(f'mine (encode queries + exact top-{s["scored_pairs"] // s["mined_queries"]}): {s["mine_seconds"]:.2f} s, '
          f'{s["mine_per_second"]:,.0f} queries/s')
    print(f'score pairs: {s["score_seconds"]:.1f} s, {s["score_per_second"]:,.0f} pairs/s')
    print(f'memory: {before:,.0f} MiB resident before synthesize (texts, libraries), peak {peak:,.0f} MiB; '
          f'corpus embeddings {s["corpus"] * 384 * 4 / 2**20:,.0f} MiB')



if __name__ == '__main__':
    main()
