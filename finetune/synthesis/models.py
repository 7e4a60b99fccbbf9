"""Which models synthesize training data: a relation miner (an embedding model) and a cross-encoder (the teacher)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SynthesisModels:
    """The two models of :func:`finetune.synthesize`.

    `relation_miner`: any embedding model of the registry (a name, a prefixed name such as ``'hf:<folder>'``, or
    a built model); it retrieves each query's candidate documents. `cross_encoder`: a cross-encoder name
    (``finetune models --task cross-encoding``), a prefixed name, or a built
    :class:`finetune.cross_encoders.CrossEncoder`; it scores every (query, candidate) pair, and its scores make
    the positives, the negatives and the teacher margins. None: the model the installed plugins name as the
    default for the task ``'cross-encoding'`` (a backbone's ``default_for`` makes it the default miner, a
    cross-encoder's the default scorer). The options are passed when a name is built."""

    relation_miner: Any = None
    cross_encoder: Any = None
    relation_miner_options: dict = field(default_factory=dict, compare=False)
    cross_encoder_options: dict = field(default_factory=dict, compare=False)

    def names(self) -> tuple[Any, Any]:
        """(relation miner, cross-encoder) with None replaced by the registry's defaults. Raises
        UnknownModelError when no installed plugin names one."""
        from ..registry import CROSS_ENCODER_TASK, CROSS_ENCODERS, REGISTRY
        miner, cross = self.relation_miner, self.cross_encoder
        return (REGISTRY.default_model(CROSS_ENCODER_TASK) if miner is None else miner,
                CROSS_ENCODERS.default_model(CROSS_ENCODER_TASK) if cross is None else cross)


#: Jina Finetuner's English pair, as the plugins name it: with the transformers plugin, an MS MARCO bi-encoder
#: mines (``sbert-base-en``) and an MS MARCO MiniLM cross-encoder scores (``crossencoder-base-en``)
DATA_SYNTHESIS_EN = SynthesisModels()
