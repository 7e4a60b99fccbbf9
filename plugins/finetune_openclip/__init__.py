"""finetune plugin (in progress)."""
from finetune.registry import BackbonePlugin

plugin = BackbonePlugin(name='openclip', specs=list)
