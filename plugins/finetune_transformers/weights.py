"""Where a checkpoint lives and loading it, offline first: the model, its tokenizer, and the errors that
name what is missing and the ways out."""
from __future__ import annotations

import os
import warnings

from finetune_hfhub import HUB_URL, HubFile

from finetune.errors import WeightsNotFoundError
from finetune.hub import network_problem, weights_not_found


def _not_available(model: str, source: str, what: str, reason: str) -> WeightsNotFoundError:
    return weights_not_found(
        model, [HubFile(source, ('config.json', 'model.safetensors'))], reason, what=what, path_option=False,
        name_hint="save the model to a folder and use 'hf:/path/to/dir'",
        random_way=' (needs only config.json and the tokenizer)')


def _local_only(source: str) -> tuple[bool, str | None]:
    """(load from local files only?, why) for a hub id or directory `source`."""
    if os.path.isdir(source):
        return True, None
    reason = network_problem(HUB_URL)
    return reason is not None, reason


def _load_model(name: str, model_dir: str, local_only: bool, trust: bool, reason: str | None,
                pretrained: bool | str, auto_class=None):
    """The ``AutoModel`` (or `auto_class`, e.g. ``AutoModelForSequenceClassification``) at `model_dir`: with
    its pretrained weights when `pretrained` is True, else initialized from its config alone."""
    from transformers import AutoConfig, AutoModel
    auto_class = auto_class or AutoModel
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            if pretrained is True:
                # transformers looks for a peft adapter config (when peft is installed) without local_files_only
                # unless told in adapter_kwargs: offline that look-up would wait on the network
                return auto_class.from_pretrained(model_dir, local_files_only=local_only, trust_remote_code=trust,
                                                  adapter_kwargs={'local_files_only': local_only})
            config = AutoConfig.from_pretrained(model_dir, local_files_only=local_only, trust_remote_code=trust)
            return auto_class.from_config(config, trust_remote_code=trust)
        except (OSError, ValueError) as exc:
            if os.path.isdir(model_dir):
                raise WeightsNotFoundError(
                    f'{model_dir!r} holds no transformers model for {name!r}: expected config.json and, for '
                    f"pretrained weights, model.safetensors or pytorch_model.bin ({exc}). Use "
                    f"model_options={{'pretrained': False}} to start from config.json alone.") from exc
            raise _not_available(name, model_dir, 'pretrained weights', reason or str(exc)) from exc


def _load_tokenizer(source: str, local_only: bool, trust: bool, model: str, reason: str | None):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(source, use_fast=True, local_files_only=local_only,
                                             trust_remote_code=trust)
    except OSError as exc:
        if os.path.isdir(source):
            raise WeightsNotFoundError(f'{source!r} holds no tokenizer for {model!r}: expected tokenizer.json '
                                       f'or vocab files (vocab.txt, tokenizer_config.json) ({exc}).') from exc
        raise _not_available(model, source, 'the tokenizer files', reason or str(exc)) from exc
