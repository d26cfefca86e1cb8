"""A Llama with a copy head (pointer-generator, See et al. 2017): the `micro` policy's architecture.

A policy trained from scratch on CPU for minutes cannot learn to copy rare fictional names (the
entity from the question into the query, the answer from a retrieved passage) through its vocabulary
alone: those tokens are seen a handful of times and their embeddings barely train. The copy head
lets it point instead. At each position it attends over every earlier token of the context and mixes
that attention, scattered onto token ids, with the usual next-token distribution:

    p(token) = g * softmax(lm_head(h))[token] + (1 - g) * sum of attention on positions holding token

With ``copy_context_gate`` the gate g also reads what the pointer points at (the attention-weighted
embedding of the pointed-at tokens: See et al.'s context vector), so it can tell a name's next piece
(copy on) from the question mark after it (stop).

The pointer's score for position j adds an induction term, the similarity of the current token to
the token before j, so that after copying a name's first token the next one is a short step away.

``logits`` are ``log p``, so everything downstream (sampling with temperature/top-p, log-probs for
RL, cross-entropy for SFT) works unchanged. The head's keys and the context token ids are kept in the
generation KV cache as one extra layer, so generation stays incremental.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaModel

# transformers renamed the cache argument and output field (past_key_values -> cache) in 5.x.
CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


class CopyLlamaConfig(LlamaConfig):
    model_type = "searchr1_copy_llama"

    def __init__(self, copy_head_dim: int = 64, copy_induction_init: float = 4.0, number_features: int = 0,
                 copy_exact_induction_init: float = 0.0, number_relation: bool = False,
                 copy_context_gate: bool = False, **kwargs):
        self.copy_head_dim = copy_head_dim
        self.copy_induction_init = copy_induction_init
        # > 0: an exact-token induction term as well (CopyLlamaForCausalLM.forward); 0: none (older checkpoints)
        self.copy_exact_induction_init = copy_exact_induction_init
        self.number_features = number_features  # > 0: number tokens carry a code of their value (NumberedEmbedding)
        self.number_relation = number_relation  # and of their order against the number before them
        self.copy_context_gate = copy_context_gate  # the gate also reads what the pointer points at
        super().__init__(**kwargs)


MAX_NUMBER_TOKENS = 8  # the longest number, in tokens, the relation code reads whole


class NumberedEmbedding(torch.nn.Embedding):
    """Token embeddings where a token that is a number also carries a code of its value.

    A comparison ("born earlier, A or B?") judges two copied numbers. A year is one token whose
    embedding, trained on a few hundred comparisons, never learns its place in the order; so each number
    token adds a learnt projection of a thermometer code of its value (ramps between quantiles of the
    vocabulary's numbers, whose sum grows with the value): "larger" becomes a direction in the
    embedding. Its weight stays ``.weight``, so the tied LM head is unchanged.

    With ``relation`` (``policy.micro_number_relation``) each token of a number also carries whether the
    number so far is larger than, smaller than or equal to the number before it in the sequence, its pieces
    read as one number (" 4" "29" "60" "0" is 429600): a comparison's "1825 vs 1758:" then holds its
    judgement in the last number's embedding, one token before the relation the policy writes. Without it the
    relation needs an attention that finds the other value and compares codes, which the cold start's few
    hundred comparisons never taught (issue 30, docs/results.md). It reads the tokens before ``input_ids``
    too: the copy head hands over the ids its generation cache holds (``prefix_ids``).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None, features: int,
                 relation: bool = False):
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        self.register_buffer("number_values", torch.full((num_embeddings,), -1.0))  # -1: not a number
        self.register_buffer("number_thresholds", torch.linspace(0, 1, features + 1))
        self.number_embed = torch.nn.Linear(features + 1, embedding_dim, bias=False)
        if relation:
            # Digit tokens that continue a number ("29" in " 4" "29" "60" "0"), their values and digit counts.
            self.register_buffer("digit_values", torch.full((num_embeddings,), -1.0))
            self.register_buffer("digit_lengths", torch.zeros(num_embeddings))
            self.relation_embed = torch.nn.Linear(3, embedding_dim, bias=False)

    def set_number_tokens(self, tokenizer) -> int:
        """Mark the tokens that are a number starting a word (" 1825", or " 180" where the vocabulary splits
        "1805") with their values and put the thresholds at their quantiles; returns how many."""
        values = torch.full((self.num_embeddings,), -1.0)
        for token_id in range(min(len(tokenizer), self.num_embeddings)):
            text = tokenizer.decode([token_id])
            if text.startswith(" ") and text[1:].isdigit() and len(text) <= 8:
                values[token_id] = float(text[1:])
            elif hasattr(self, "digit_values") and text.isdigit() and len(text) <= 8:
                self.digit_values[token_id] = float(text)
                self.digit_lengths[token_id] = len(text)
        numbers = values[values >= 0]
        self.number_values.copy_(values)
        if len(numbers):  # none (a corpus without numbers): every code stays 0
            self.number_thresholds.copy_(torch.quantile(numbers, torch.linspace(0, 1, len(self.number_thresholds))))
        return len(numbers)

    def number_code(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(..., features + 1): the ramps and a number flag; zeros for other tokens."""
        v = self.number_values[input_ids][..., None]
        lo, hi = self.number_thresholds[:-1], self.number_thresholds[1:]
        ramps = ((v - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
        return torch.cat([ramps, torch.ones_like(v)], dim=-1) * (v >= 0).to(ramps.dtype)

    def number_relation(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, S, 3) for token ids (B, S): at each token of a number (" 4" "29" "60" "0" read as 4, 429, 42960,
        429600), whether the number so far is larger than, smaller than or equal to the number before it in
        the sequence; zeros elsewhere. "1881 vs 1822" then carries its judgement on its last token."""
        start = self.number_values[ids].double()
        more, scale = self.digit_values[ids].double(), 10.0 ** self.digit_lengths[ids].double()
        value = start
        for _ in range(MAX_NUMBER_TOKENS - 1):  # each pass extends every number by one more token
            before = F.pad(value[:, :-1], (1, 0), value=-1.0)
            value = torch.where((start < 0) & (more >= 0) & (before >= 0), before * scale + more, value)
        pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        first = torch.where(start >= 0, pos, -1).cummax(1).values  # where the current number began
        last = torch.where(value >= 0, pos, -1).cummax(1).values  # the latest number token so far
        end_before = torch.where(first > 0, last.gather(1, (first - 1).clamp_min(0)), -1)  # the number before's end
        previous = torch.where(end_before >= 0, value.gather(1, end_before.clamp_min(0)), -1.0)
        on = ((value >= 0) & (previous >= 0))[..., None]
        rel = torch.stack([value > previous, value < previous, value == previous], dim=-1)
        return (rel & on).float()

    def forward(self, input_ids: torch.Tensor, prefix_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``prefix_ids``: the tokens before ``input_ids`` (cached decoding), which the relation code reads."""
        embeds = super().forward(input_ids)
        embeds = embeds + self.number_embed(self.number_code(input_ids).to(embeds.dtype))
        if hasattr(self, "relation_embed"):
            ids = input_ids if prefix_ids is None else torch.cat([prefix_ids, input_ids], dim=1)
            rel = self.number_relation(ids)[:, -input_ids.shape[1]:]
            embeds = embeds + self.relation_embed(rel.to(embeds.dtype))
        return embeds


class CopyLlamaForCausalLM(LlamaForCausalLM):
    config_class = CopyLlamaConfig
    # Its logits mix lm_head(h) with attention over the context's tokens: RL scoring cannot run the
    # head alone on chunks of hidden states (models/heads.plain_head).
    logits_need_context = True
    supports_logits_at = True  # forward(logits_at=mask): logits at the masked positions only

    def __init__(self, config: CopyLlamaConfig):
        super().__init__(config)
        d, k = config.hidden_size, config.copy_head_dim
        self.copy_query = torch.nn.Linear(d, k, bias=False)
        self.copy_key = torch.nn.Linear(d, k, bias=False)
        self.copy_gate = torch.nn.Linear(d, 1)  # logit of g, the weight of the vocabulary distribution
        if getattr(config, "copy_context_gate", False):
            # Adds to g's logit a reading of the embedding the pointer is about to copy: with h alone the gate
            # must know from the backbone whether a name goes on, and it cut names mid-word where the pointer
            # was already on the next piece (issue 30, docs/results.md).
            self.copy_gate_context = torch.nn.Linear(config.hidden_size, 1, bias=False)
        # Weight of the induction term: how much pointing prefers the token after an earlier copy of
        # the current token, which is how a multi-token name is copied on after its first token.
        self.copy_induction = torch.nn.Parameter(torch.tensor([float(config.copy_induction_init)]))  # 1-d: DeepSpeed broadcasts no 0-d tensors
        # Weight of the exact-token induction term: the pointer prefers position j when the token before j is
        # the current token (and more when the one before that is the previous token). Embedding similarity
        # alone lets a copy of a phrase the model never trained on wander to a similar-looking token.
        if getattr(config, "copy_exact_induction_init", 0.0):
            self.copy_exact_induction = torch.nn.Parameter(torch.tensor([float(config.copy_exact_induction_init)]))
        if config.number_features:  # inside the backbone, so the critic's copy of it sees the codes too
            old = self.model.embed_tokens
            self.model.embed_tokens = NumberedEmbedding(old.num_embeddings, old.embedding_dim, old.padding_idx,
                                                        config.number_features, getattr(config, "number_relation", False))
        self.post_init()

    def _copy_layer(self, cache) -> int:
        """Index of the cache layer holding copy keys and token ids (one past the decoder layers)."""
        idx = self.config.num_hidden_layers
        layer_class = getattr(cache, "layer_class_to_replicate", None) or DynamicLayer  # growing_cache's, if given
        while len(cache.layers) <= idx:
            cache.layers.append(layer_class())
        return idx

    def _cached_ids(self, cache) -> torch.Tensor | None:
        """The token ids the generation cache already holds (its copy layer), or None."""
        if cache is None or len(cache.layers) <= self.config.num_hidden_layers:
            return None
        layer = cache.layers[self.config.num_hidden_layers]
        if not getattr(layer, "is_initialized", False) or layer.values.numel() == 0:
            return None
        return layer.values[:, 0, :, 0].long()

    def _pointed_at(self, attn: torch.Tensor, ids: torch.Tensor, logits_at: torch.Tensor | None) -> torch.Tensor:
        """The attention-weighted embedding of the context tokens: (B, T, d), or (N, d) for ``logits_at``."""
        pointed = F.embedding(ids, self.model.embed_tokens.weight).float()  # (B, S, d)
        if logits_at is None:
            return attn @ pointed
        rows = logits_at.nonzero()[:, 0]  # the batch row of each selected position, in attn's order
        out = attn.new_zeros(attn.shape[0], pointed.shape[-1])
        for b in rows.unique().tolist():
            pick = rows == b
            out[pick] = attn[pick] @ pointed[b]
        return out

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        logits_at=None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """``logits_at`` (bool, batch x the positions ``logits_to_keep`` keeps): return logits only there,
        as an (N, vocab) tensor in row-major order. Training reads log-probs of the policy's own tokens
        only (a sixth of SFT positions): the vocabulary-wide mixing is most of this head's cost."""
        if input_ids is None:
            raise ValueError("the copy head needs input_ids (it points at context tokens)")
        embed = self.model.embed_tokens
        if hasattr(embed, "relation_embed"):  # the relation code reads the cached tokens before input_ids
            inputs_embeds = embed(input_ids, self._cached_ids(kwargs.get(CACHE_ARG)))
        out = self.model(
            input_ids=input_ids if inputs_embeds is None else None,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **kwargs,
        )
        h = out.last_hidden_state  # (B, T, d)
        keys = self.copy_key(h)[:, None]  # (B, 1, T, k): cache layout (batch, heads, seq, dim)
        ids = input_ids[:, None, :, None].to(keys.dtype)  # ids < 2**24 are exact in float32
        cache = getattr(out, CACHE_ARG, None)
        if cache is not None:
            keys, ids = cache.update(keys, ids, self._copy_layer(cache))
        keys, ids = keys[:, 0], ids[:, 0, :, 0].long()  # (B, S, k), (B, S)

        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        steps, width = h.shape[1], keys.shape[1]
        scores = self.copy_query(h) @ keys.transpose(1, 2) / math.sqrt(self.config.copy_head_dim)  # (B, T, S)
        # Induction term: cosine(embedding of the current token, embedding of the token before position j).
        embed = self.model.embed_tokens.weight
        current = F.normalize(F.embedding(input_ids[:, -steps:], embed), dim=-1)
        previous = torch.cat([ids[:, :1], ids[:, :-1]], dim=1)
        if attention_mask is not None:  # the first real token of a left-padded row has no predecessor:
            real = attention_mask[:, -width:].bool()  # itself, as in an unpadded row
            previous = torch.where(torch.cat([real[:, :1], real[:, :-1]], dim=1), previous, ids)
        before = F.normalize(F.embedding(previous, embed), dim=-1)
        scores = scores + self.copy_induction * (current @ before.transpose(1, 2))
        if hasattr(self, "copy_exact_induction"):
            # ids at the query positions and one before them (the context's ids end at the last query position;
            # ``previous`` already holds "the token before", with a left-padded row's first token as an unpadded one's)
            now, now_prev = ids[:, -steps:], previous[:, -steps:]
            before_prev = torch.cat([previous[:, :1], previous[:, :-1]], dim=1)  # the token two before j
            one = now[:, :, None] == previous[:, None, :]
            two = one & (now_prev[:, :, None] == before_prev[:, None, :])
            scores = scores + self.copy_exact_induction * (one.to(scores.dtype) + two.to(scores.dtype))
        query_pos = torch.arange(width - steps, width, device=h.device)
        context = torch.arange(width, device=h.device)[None, :]
        allowed = (context <= query_pos[:, None])[None]  # causal
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, -width:].bool()
        allowed = allowed | (context == query_pos[:, None])[None]  # itself: a padding row is never all -inf
        targets = ids[:, None, :].expand(-1, steps, -1)  # the token id at each pointed-at position
        if logits_at is not None:  # (B, T, ...) -> (N, ...): only the selected positions from here on
            allowed = allowed.expand(scores.shape[0], -1, -1)
            scores, allowed, targets, h = scores[logits_at], allowed[logits_at], targets[logits_at], h[logits_at]
        attn = scores.float().masked_fill(~allowed, float("-inf")).softmax(-1)
        gate_logit = self.copy_gate(h).float()
        if hasattr(self, "copy_gate_context"):
            gate_logit = gate_logit + self.copy_gate_context(self._pointed_at(attn, ids, logits_at).to(h.dtype)).float()
        gate = torch.sigmoid(gate_logit)
        vocab = self.lm_head(h).float().softmax(-1)
        # g * vocab + (1 - g) * (attention scattered onto token ids), without a dense copy tensor.
        probs = (gate * vocab).scatter_add(-1, targets, (1 - gate) * attn)
        logits = torch.log(probs + 1e-9)  # the epsilon keeps log finite where both parts are 0

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states, **{CACHE_ARG: cache})


AutoConfig.register(CopyLlamaConfig.model_type, CopyLlamaConfig)
AutoModelForCausalLM.register(CopyLlamaConfig, CopyLlamaForCausalLM)
