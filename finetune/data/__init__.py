"""User data -> :class:`TrainingData`: lists, CSV files, image folders, DataFrames, Hugging Face datasets;
data kinds as objects (:mod:`finetune.data.kinds`)."""
from .kinds import DataKind, get_kind, kind_names, register_kind
from .loading import TrainingData, item_modality, load_data
from ..synthesis.models import DATA_SYNTHESIS_EN, SynthesisModels

__all__ = ['DATA_SYNTHESIS_EN', 'KINDS', 'DataKind', 'SynthesisModels', 'TrainingData', 'get_kind', 'item_modality',
           'kind_names', 'load_data', 'register_kind']


def __getattr__(name: str):
    if name == 'KINDS':
        return kind_names()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
