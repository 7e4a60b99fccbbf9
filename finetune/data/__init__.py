"""User data -> :class:`TrainingData`: lists, CSV files, image folders, Hugging Face datasets."""
from .loading import KINDS, TrainingData, item_modality, load_data

__all__ = ['KINDS', 'TrainingData', 'item_modality', 'load_data']
