"""The loss of a run on several datasets: one loss per dataset, each batch scored by its dataset's loss (see
:mod:`finetune.data.several`)."""
from __future__ import annotations

from torch import Tensor, nn


class PerDataset(nn.Module):
    """``forward(PartInputs)`` -> the loss of that batch's dataset. `losses`: dataset name -> its loss, in the order
    of the datasets; their own parameters (learned temperatures, class weights) train as a single loss's do."""

    def __init__(self, losses: dict[str, nn.Module]):
        super().__init__()
        self.names = list(losses)
        self.parts = nn.ModuleList(losses.values())
        self.name = ', '.join(f'{name}: {loss.name}' for name, loss in losses.items())
        #: each dataset's loss by name (what a checkpoint keeps as the run's ``loss``)
        self.by_dataset = {name: loss.name for name, loss in losses.items()}
        dims = {loss.matryoshka_dims for loss in self.parts}
        #: the Matryoshka sizes every dataset's loss trains at (the same for all: see the trainer's check)
        self.matryoshka_dims = dims.pop() if len(dims) == 1 else None

    def forward(self, inputs) -> Tensor:
        return self.parts[inputs.dataset](inputs.inputs)
