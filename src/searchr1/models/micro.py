"""The CPU-sized `micro` policy: a byte-level BPE tokenizer trained on the corpus and a few-million
parameter Llama model trained from scratch by the cold start."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from searchr1.io import iter_jsonl
from searchr1.prompts import INVALID_ACTION_MESSAGE, TAGS, TEMPLATES

log = logging.getLogger(__name__)

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"


def _training_texts(corpus_path: str | Path, qa_paths: Sequence[str | Path]) -> Iterator[str]:
    """Everything the policy will read or write: passages, questions, answers, templates (search queries
    are made of their words). Generator metadata such as gold queries is never read."""
    yield from TEMPLATES.values()
    yield INVALID_ACTION_MESSAGE
    for _, row in iter_jsonl(corpus_path):
        yield row.get("contents", "")
    for path in qa_paths:
        for _, row in iter_jsonl(path):
            yield row.get("question", "")
            yield " ".join(str(a) for a in row.get("golden_answers", []))


def train_micro_tokenizer(
    corpus_path: str | Path, qa_paths: Sequence[str | Path], vocab_size: int, out_dir: str | Path
):
    """Train a byte-level BPE on corpus + questions and save it as a PreTrainedTokenizerFast.

    The Search-R1 tags are added (non-special) single tokens so they survive decoding; <|pad|>,
    <|bos|>, <|eos|> are special and distinct (padding never hides an end of sequence). Nothing is
    added on encode (the rollout encodes with add_special_tokens=False). No chat template: prompts are raw text.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TAGS),  # tags are added on top; the total stays at vocab_size
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_texts(corpus_path, qa_paths), trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAGS])
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False
    )
    hf_tok.save_pretrained(out_dir)
    return hf_tok


def build_micro_policy(cfg, tokenizer):
    """A randomly initialised Llama model sized by ``cfg.micro_*`` (PolicyConfig), tied embeddings,
    with a copy head when ``cfg.micro_copy_head`` (see copy_llama.py: entity names go from the
    question into the query and from a retrieved passage into the answer, and a model trained for
    minutes cannot learn that through its vocabulary alone).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from searchr1.models.copy_llama import CopyLlamaConfig, CopyLlamaForCausalLM

    if cfg.micro_hidden_size % cfg.micro_heads:
        raise ValueError(
            f"policy.micro_hidden_size={cfg.micro_hidden_size} is not divisible by policy.micro_heads={cfg.micro_heads}"
        )
    if cfg.micro_number_features and not cfg.micro_copy_head:
        log.warning("policy.micro_number_features is part of the copy_llama architecture: off with micro_copy_head=false")
    config_cls, model_cls = (CopyLlamaConfig, CopyLlamaForCausalLM) if cfg.micro_copy_head else (LlamaConfig, LlamaForCausalLM)
    number_features = cfg.micro_number_features if cfg.micro_copy_head else 0
    extra = {"number_features": number_features, "number_relation": bool(number_features and cfg.micro_number_relation),
             "copy_exact_induction_init": cfg.micro_copy_exact_induction,
             "copy_context_gate": cfg.micro_copy_context_gate} if cfg.micro_copy_head else {}
    config = config_cls(
        **extra,
        vocab_size=len(tokenizer),
        hidden_size=cfg.micro_hidden_size,
        intermediate_size=cfg.micro_hidden_size * 8 // 3,  # Llama's SwiGLU ratio
        num_hidden_layers=cfg.micro_layers,
        num_attention_heads=cfg.micro_heads,
        num_key_value_heads=cfg.micro_heads,
        max_position_embeddings=cfg.micro_max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = model_cls(config)
    if number_features:
        found = model.model.embed_tokens.set_number_tokens(tokenizer)
        log.info("micro policy: %d number tokens carry a code of their value", found)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def count_params(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
