"""The tokenizer of the shipped tiny models: byte-level BPE trained on the corpus.

Byte-level BPE as GPT-2 / LLaDA's tokenizer (any text encodes, nothing is unknown), with
digits split one per token before BPE (as LLaMA's tokenizer does) so numbers keep their
place-value structure for the math tasks. Specials follow LLaDA-8B-Instruct's roles under short
names: `<|bos|>`, `<|eos|>` (also padding), `<|mask|>` (the diffusion mask), `<|eot|>` (end of
turn, LLaDA's `<|eot_id|>`) and the role markers `<|start_header_id|>` / `<|end_header_id|>`.
The chat template renders LLaDA's layout, except that contents are not trimmed (a code
body's leading indentation must survive).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .corpus import Corpus

log = logging.getLogger(__name__)

BOS, EOS, MASK, EOT = "<|bos|>", "<|eos|>", "<|mask|>", "<|eot|>"
START_HEADER, END_HEADER = "<|start_header_id|>", "<|end_header_id|>"
SPECIAL_TOKENS = (BOS, EOS, MASK, EOT, START_HEADER, END_HEADER)   # ids 0..5 in this order
DEFAULT_VOCAB_SIZE = 3072
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content']"
    " + '<|eot|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)


def corpus_texts(corpus: Corpus) -> list[str]:
    """What the tokenizer learns from: every pretraining document and every SFT turn."""
    return [*corpus.pretrain, *(t for pair in corpus.sft for t in pair)]


def train_bpe(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` (deterministic for the same texts in the same order)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  min_frequency=2, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: str | Path, model_max_length: int = 4096) -> Path:
    """Write tokenizer.json, tokenizer_config.json (with the chat template) and
    special_tokens_map.json, loadable by `transformers.AutoTokenizer.from_pretrained(out_dir)`."""
    from tokenizers.processors import TemplateProcessing

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Like LLaDA's tokenizer: encoding text adds BOS in front (add_special_tokens=True), so an
    # evaluation prompt starts as every training row does. Chat-templated text carries its own.
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                            special_tokens=[(BOS, bos_id)])
    tok.save(str(out / "tokenizer.json"))
    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "mask_token": MASK,
                "additional_special_tokens": [EOT, START_HEADER, END_HEADER]}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False,
              "chat_template": CHAT_TEMPLATE, **specials,
              "added_tokens_decoder": {str(tok.token_to_id(t)): {
                  "content": t, "special": True, "lstrip": False, "rstrip": False,
                  "normalized": False, "single_word": False} for t in SPECIAL_TOKENS}}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, sort_keys=True) + "\n")
    return out


def train_tokenizer(corpus: Corpus, out_dir: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Train on the corpus and save to out_dir (see `save_tokenizer`); returns out_dir."""
    tok = train_bpe(corpus_texts(corpus), vocab_size)
    log.info("tokenizer: vocab %d trained on %d texts", tok.get_vocab_size(), len(corpus_texts(corpus)))
    return save_tokenizer(tok, out_dir)
