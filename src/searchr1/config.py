"""Typed settings: `params.yaml` is the single source of settings for every stage.

Each stage reads its own section into a validated pydantic model. Unknown keys and wrong
types are errors that name the offending key (e.g. ``train.lr: Input should be a valid number``).
CLI ``--set a.b=c`` overrides and ``dvc exp run -S a.b=c`` edits land in the same objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from searchr1.errors import SearchR1Error


class ConfigError(SearchR1Error, ValueError):
    """A settings file or override is invalid; the message names the file and key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class WorldConfig(Section):
    """The bundled fictional knowledge world (the offline default task)."""

    seed: int = 0
    num_people: int = Field(1500, ge=10)
    num_places: int = Field(500, ge=10)
    num_organizations: int = Field(700, ge=10)
    num_inventions: int = Field(700, ge=10)
    num_events: int = Field(700, ge=10)
    distractors_per_entity: float = Field(1.0, ge=0)
    num_train_questions: int = Field(3000, ge=1)
    num_test_questions: int = Field(500, ge=1)
    version: int = Field(1, ge=1, description="World version; >1 emits a refreshed world with changed facts.")
    style: Literal[1, 2] = Field(
        1, description="Surface forms: 1 is the default world; 2 a check world with the same structure but names, "
        "passage sentences and question phrasings that style 1 never uses."
    )
    out_dir: str = "data/world"


class CorpusConfig(Section):
    """Corpus preparation: the bundled world or a wiki-18-style jsonl file."""

    source: Literal["world", "jsonl"] = "world"
    path: str | None = Field(None, description="jsonl corpus when source=jsonl (e.g. wiki-18.jsonl)")
    max_passages: int | None = Field(None, ge=1)
    out_path: str = "data/corpus/corpus.jsonl"
    stats_path: str = "data/corpus/stats.json"


class QAConfig(Section):
    """QA preparation: bundled questions or FlashRAG / HF datasets for the paper's 7 benchmarks."""

    source: Literal["world", "flashrag", "hf"] = "world"
    flashrag_dir: str | None = None
    hf_path: str = "RUC-NLPIR/FlashRAG_datasets"
    train_datasets: list[str] = ["nq", "hotpotqa"]
    test_datasets: list[str] = ["nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle"]
    max_train: int | None = Field(None, ge=1)
    max_test_per_dataset: int | None = Field(None, ge=1)
    seed: int = Field(0, description="Seed of the max_train / max_test_per_dataset subsampling.")
    template: str = "search_r1"
    out_dir: str = "data/qa"


class EncoderConfig(Section):
    name_or_path: str = "all-MiniLM-L6-v2"
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    query_prefix: str = ""
    passage_prefix: str = ""
    max_length: int = Field(256, ge=8)
    batch_size: int = Field(128, ge=1)
    backend: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description="onnx: ONNX Runtime on CPU (needs onnxruntime + onnx; same vectors, ~2x faster); auto: onnx on "
        "CPU when both are installed, else torch; GPU always uses torch.",
    )


class FaissConfig(Section):
    type: Literal["flat", "hnsw", "ivfpq"] = "flat"
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_search: int = Field(128, ge=1)
    ivf_nlist: int = Field(1024, ge=1)
    pq_m: int = Field(48, ge=1)
    ivf_nprobe: int = Field(32, ge=1)
    train_sample: int = Field(200_000, ge=1)
    use_gpu: bool | Literal["auto"] = "auto"
    shard_size: int = Field(65_536, ge=1, description="Passages per embedding shard (resume unit).")
    rebuild_fraction: float = Field(
        0.2, ge=0, le=1, description="Incremental updates rebuild the FAISS index (from kept embeddings) above this removed fraction."
    )
    prebuilt_index: str | None = Field(
        None, description="A FAISS file written by Search-R1's index_builder.py (e.g. e5_Flat.index, e5_HNSW64.index) "
        "over this very corpus: the index stage checks it against these settings and links it in instead of encoding "
        "the corpus (docs/prebuilt.md)."
    )
    prebuilt_check_passages: int = Field(
        64, ge=0, description="Passages of the corpus re-encoded and compared with prebuilt_index's stored vectors "
        "(0: no check)."
    )


class ServerConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=1, le=65535)
    url: str | None = Field(None, description="Use an already running retrieval server instead of in-process.")
    token_file: str | None = Field(
        None, description="File holding the bearer token that server and clients use. Or set the environment "
        "variable SEARCHR1_RETRIEVAL_TOKEN (it wins). Never a setting or an argument: those show in `ps`."
    )
    rate_limit_per_s: float = Field(0.0, ge=0, description="Requests per second per client host (token bucket); 0 = off.")
    rate_limit_burst: int = Field(32, ge=1, description="Requests a client may send at once before the rate applies.")
    max_queries_per_request: int = Field(512, ge=1)
    max_query_chars: int = Field(2048, ge=1)
    max_topk: int = Field(50, ge=1)
    cache_size: int = Field(100_000, ge=0)
    batch_window_ms: float = Field(
        5.0, ge=0, description="How long a small request waits for concurrent ones to batch with."
    )
    batch_min_queries: int = Field(
        16, ge=1, description="A request of at least this many queries is a batch already: it does not wait the window "
        "(Search-R1's one request per rollout turn would otherwise pay it every turn)."
    )
    timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(3, ge=0)
    launch: bool = Field(False, description="Flows start a server for train/evaluate (unless url is set) and point the stages at it.")


class WebSearchConfig(Section):
    """retrieval.method=web: a web search API instead of a local index (retrieval/web.py, docs/pipeline.md)."""

    provider: Literal["serpapi", "google"] = Field(
        "serpapi", description="serpapi: SerpAPI's search.json; google: the Google Custom Search JSON API."
    )
    base_url: str | None = Field(
        None, description="Endpoint override (a proxy, or a local fake in tests). Default: the provider's own, "
        "https://serpapi.com/search.json or https://www.googleapis.com/customsearch/v1."
    )
    key_env: str | None = Field(
        None, description="Environment variable holding the API key (default: SERPAPI_API_KEY for serpapi, "
        "GOOGLE_API_KEY for google). The key itself is never a setting: settings are logged and show in `ps`."
    )
    key_file: str | None = Field(None, description="File whose first line is the API key, read when key_env is unset.")
    cx: str | None = Field(None, description="google: the Programmable Search Engine id (not a secret).")
    engine: str = Field("google", description="serpapi: the engine SerpAPI searches with (paging follows Google's).")
    gl: str | None = Field(None, description="Country of the search, e.g. us (both providers).")
    hl: str | None = Field(None, description="Interface language, e.g. en (both providers).")
    safe: Literal["active", "off"] | None = Field(None, description="SafeSearch (both providers); None: the provider's default.")
    cache_dir: str | None = Field(
        "cache/web", description="One JSON file per (provider, search settings, query): training replays the same "
        "queries, and a cached query costs no request. None: no cache (always live)."
    )
    timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(3, ge=0, description="Retries of a request that timed out or got 429 / 5xx (Retry-After honoured).")
    rate_limit_per_s: float = Field(5.0, ge=0, description="Requests per second to the provider, over all threads; 0 = off.")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once for a batch of queries.")


class RerankConfig(Section):
    """retrieval.rerank: a cross-encoder reorders the retriever's top_n candidates and keeps topk
    (Search-R1's retrieval_rerank_server.py; retrieval/rerank.py)."""

    name_or_path: str | None = Field(
        None, description="HF id or local path of a cross-encoder (one relevance logit per pair), e.g. "
        "cross-encoder/ms-marco-MiniLM-L12-v2, Search-R1's default. None: no reranking."
    )
    top_n: int = Field(10, ge=1, description="Candidates asked of the retriever per query; at least retrieval.topk.")
    batch_size: int = Field(32, ge=1, description="(query, passage) pairs per cross-encoder forward pass.")
    max_length: int = Field(512, ge=8, description="Tokens of query + passage; longer pairs are truncated.")
    cache_size: int = Field(100_000, ge=0, description="(query, passage) scores kept in an LRU cache; 0 = off.")


class RetrievalConfig(Section):
    method: Literal["bm25", "dense", "hybrid", "web"] = Field(
        "bm25", description="web: a web search API (retrieval.web); it needs no index and no corpus."
    )
    topk: int = Field(3, ge=1)
    index_dir: str = "indexes"
    build: list[Literal["bm25", "dense"]] = Field(
        ["bm25"], description="Indexes to build; the ones retrieval.method searches are always added (dense: "
        "encoding the corpus is most of the index stage's time, so the bm25 demo does not pay for it)."
    )
    encoder: EncoderConfig = EncoderConfig()
    faiss: FaissConfig = FaissConfig()
    server: ServerConfig = ServerConfig()
    web: WebSearchConfig = WebSearchConfig()
    rrf_k: int = Field(60, ge=1)
    rerank: RerankConfig = RerankConfig()

    @model_validator(mode="after")
    def _build_what_is_searched(self) -> RetrievalConfig:
        if self.method == "web" and self.web.provider == "google" and not self.web.cx:
            raise ValueError("retrieval.web.provider=google needs retrieval.web.cx, the Programmable Search Engine id")
        needed = {"bm25": ["bm25"], "dense": ["dense"], "hybrid": ["bm25", "dense"], "web": []}[self.method]
        missing = [name for name in needed if name not in self.build]
        if missing:  # (assignment re-validates: only when something is missing, so it terminates)
            self.build = [*self.build, *missing]
        return self

    @model_validator(mode="after")
    def _rerank_sees_topk(self) -> RetrievalConfig:
        if self.rerank.name_or_path and self.rerank.top_n < self.topk:
            raise ValueError(f"retrieval.rerank.top_n={self.rerank.top_n} < retrieval.topk={self.topk}: the reranker "
                             "keeps topk of its top_n candidates")
        return self


class PolicyConfig(Section):
    """Which policy to load. `kind` picks the loader; all loaders return (model, tokenizer)."""

    kind: Literal["micro", "smol", "hf", "tiny"] = "micro"
    name_or_path: str | None = Field(None, description="HF id or local path when kind=hf")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype. auto: bfloat16 for a pretrained policy (smol, hf) where the device has fast "
        "bf16 (a CUDA GPU, a CPU with AVX-512 BF16 or AMX), else float32 (models/precision.py); training keeps "
        "float32 master weights either way.")
    micro_hidden_size: int = Field(256, ge=8)
    micro_layers: int = Field(4, ge=1)
    micro_heads: int = Field(4, ge=1)
    micro_vocab_size: int = Field(4096, ge=256)
    micro_max_positions: int = Field(1024, ge=64)
    micro_copy_head: bool = True  # a pointer over the context (copy_llama.py); false = plain Llama
    micro_number_features: int = Field(16, ge=0)  # > 0: number tokens carry a code of their value (copy_llama.py); 0: off
    micro_number_relation: bool = False  # with number features: each number also carries its order against the number before it (copy_llama.py)
    micro_copy_exact_induction: float = Field(0.0, ge=0)  # > 0: the copy head's exact-token induction term, this initial weight (copy_llama.py); 0: off
    micro_copy_context_gate: bool = False  # the copy gate also reads what the pointer points at (copy_llama.py)
    out_dir: str = "models/base"


class RolloutConfig(Section):
    engine: Literal["hf", "vllm"] = "hf"
    template: str = Field("search_r1", description="Search instruction (a name in prompts.TEMPLATES); the cold start uses it too.")
    max_turns: int = Field(4, ge=0)
    max_prompt_tokens: int = Field(512, ge=16)
    max_turn_tokens: int = Field(128, ge=1)
    max_obs_tokens: int = Field(512, ge=1)
    max_total_tokens: int = Field(2048, ge=32)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    seed: int = 0
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    vllm_gpu_memory_utilization: float = Field(0.5, gt=0, le=1)


class RewardConfig(Section):
    metric: Literal["em", "substring_em", "f1"] = "em"
    format_reward: bool = False
    structure_format_score: float = 0.2
    final_format_score: float = 0.1
    retrieval_score: float = 0.0


class LoraConfig(Section):
    """LoRA adapters (the peft package, models/lora.py): low-rank updates of the target layers train, the base
    weights stay frozen. One section shape for ``sft.lora`` and ``train.lora``, each switched on by itself."""

    enabled: bool = False
    rank: int = Field(16, ge=1, description="r, the rank of each update B @ A (verl's lora_rank, peft's r).")
    alpha: float = Field(32.0, gt=0, description="The update is scaled by alpha / rank (peft's lora_alpha).")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the adapters' input in training passes (peft's lora_dropout); 0 keeps "
        "an RL update's forward pass the same function as the rollout's."
    )
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Linear layers that get an adapter, by name (peft's target_modules), or all-linear (every linear "
        "layer but the LM head). The micro policy's copy head (copy_query, copy_key, copy_gate) and its number code "
        "(number_embed) are Linear layers too: list them to adapt them; otherwise they stay frozen."
    )


class SFTConfig(Section):
    """Cold start: SFT on search trajectories built from the knowledge base (retrieved tokens masked)."""

    enabled: bool = True
    source: Literal["mined", "gold", "rejection"] = Field(
        "mined",
        description="mined: search paths mined from question, answers and corpus (sft/mining.py); gold: the "
        "generator's metadata.gold_queries (an upper bound that real data cannot give); rejection: correct "
        "samples of the base policy.",
    )
    mine_max_hops: int = Field(3, ge=1, description="Most searches in a mined path.")
    mine_beam: int = Field(4, ge=1, description="Open paths per question kept at each mining depth.")
    mine_candidates: int = Field(8, ge=1, description="Follow-up queries tried from each open path.")
    mine_question_words: bool = Field(
        True, description="Also try follow-ups of a name plus the question's remaining words."
    )
    mine_comparisons: bool = Field(
        True, description="A question whose answer is one of its own names is a comparison: its mined path looks "
        "up each name it compares, and its trajectory notes each one's deciding value after the search that "
        "showed it, writes the relation of the two values, then answers (sft/mining.py, sft/trajectories.py). "
        "False: the older rule (the answer's own passage is enough; one search per comparison)."
    )
    comparison_copies: int = Field(
        4, ge=1, description="Times each comparison trajectory appears in the cold start (with mine_comparisons): "
        "the judgement is learnt from a few hundred questions, a small share of the data."
    )
    comparison_swaps: bool = Field(
        True, description="Half of the comparison copies ask with the two names swapped and look them up in the "
        "other order: the answer then follows from the values, not from which name the question put first."
    )
    vary_values: bool = Field(
        False, description="Each extra comparison copy reads two other numbers of the corpus (of the same lengths) "
        "in place of the compared values, and names the side they make win: the name after the relation is then "
        "learnt from the relation and the question's direction, not from one pair (sft/trajectories.py "
        "with_other_values). False: the copies repeat the values found."
    )
    say_direction: bool = Field(
        False, description="A comparison's plan says which value wins, read from the question (\"The smaller wins.\"), "
        "and its last thought says it again after the relation, before the name: the name then follows from two "
        "words beside it, not from the question's wording far back."
    )
    mark_order: bool = Field(
        False, description="A comparison's plan names its two sides with an ordinal each (\"first A, second B\") and "
        "its last thought picks the winner by its ordinal (\"The smaller wins: second B\"): a word the vocabulary "
        "decides, after which the copy head's induction finds the name (sft/trajectories.py)."
    )
    relation_after: bool = Field(
        False, description="A comparison writes its relation after both values (\"1825 vs 1758:>\"), not between "
        "them (\"1825 > 1758\"): the form number_drills train and policy.micro_number_relation serves."
    )
    relation_in_note: bool = Field(
        False, description="The note of the value found last runs on into the relation (\"B: 1795 vs 1801:<.\"), "
        "instead of the value being written again to open it (\"B: 1795. 1795 vs 1801:<.\"): one copy fewer in "
        "the judgement, and the choice between searching on and judging is the word after the value (\".\" or "
        "\" vs\"). Off: over two seeds of the check world it gained once and lost once (issue 30, docs/results.md)."
    )
    number_drills: int = Field(
        0, ge=0, description="Short examples of the relation a comparison writes, on pairs of the corpus's own "
        "numbers (\"1755 vs 1740:\" -> \">\", sft/trajectories.py): in a trajectory that token is one of a "
        "hundred trained, too little for a small policy to learn to compare. With say_direction and mark_order they "
        "also train the winner's ordinal (\"... The smaller wins:\" -> \"second\"). 0: none."
    )
    new_names: float = Field(
        0.0, ge=0, le=1, description="Share of the trajectories that also appear with made-up names: every word of the "
        "question's names and of the answers that the corpus never writes in lower case is replaced by a made-up word "
        "wherever the policy reads or writes it (sft/trajectories.py with_new_names). The policy learns to copy "
        "whatever names a question and its passages hold, not this corpus's (issue 33). 0: none."
    )
    reword: float = Field(
        0.0, ge=0, le=1, description="In those copies, the chance that each other word of the question is replaced "
        "by a word of the corpus: a question worded as none before still gets searched and answered (issue 33)."
    )
    num_examples: int | None = Field(None, ge=1)
    epochs: int = Field(2, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    micro_batch_size: int | None = Field(
        None, ge=1, description="Examples per forward/backward; a batch's gradient is accumulated over them (the "
        "same update). Bounds peak memory: a batch's logits alone are examples x length x vocabulary floats."
    )
    plan_first: bool = Field(
        True, description="When the first search is the question, the first thought says whether one search or more "
        "will be needed (\"One search should do.\" / \"This needs more than one search.\"), decided from the question "
        "alone. False: that thought is the same for every question, and whether to search again is decided after "
        "reading the passages (the next thought: search for the next hop, or answer from them). Comparisons keep "
        "their plan (which names to look up)."
    )
    query_noise: float = Field(0.3, ge=0, le=1, description="Fraction of trajectories with an imperfect first query.")
    skip_hop: float = Field(
        0.5, ge=0, le=1, description="Multi-hop trajectories answering after one search when its passages already hold the answer."
    )
    rag_fraction: float = Field(
        0.0, ge=0, le=1,
        description="Fraction of questions that also get a retrieve-then-answer example (the rag template), so a "
        "policy trained from scratch can be scored as the RAG baseline too.",
    )
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: int = Field(1024, ge=32, description="Tokens per example (prompt + response); longer ones are cut.")
    lora: LoraConfig = Field(
        default_factory=LoraConfig, description="Train LoRA adapters instead of every weight; out_dir still gets "
        "the merged weights (what RL starts from), and the adapter in out_dir/adapter."
    )
    out_dir: str = "models/sft"

    @model_validator(mode="after")
    def _drills_match_the_relation(self) -> SFTConfig:
        if self.number_drills and not self.relation_after:
            raise ValueError("sft.number_drills trains the relation written after both values (\"1755 vs 1740:>\"): "
                             "it needs sft.relation_after: true")
        if self.reword and not self.new_names:
            raise ValueError("sft.reword rewords the questions of the copies that sft.new_names makes: with "
                             "sft.new_names: 0 there are none; set sft.new_names > 0 or sft.reword: 0")
        if self.number_drills and not self.mine_comparisons:
            raise ValueError("sft.number_drills drills the judgement that mined comparison trajectories write: with "
                             "sft.mine_comparisons: false no trajectory writes one; set sft.number_drills: 0")
        return self


class DeepSpeedConfig(Section):
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_param: bool = False
    bf16: bool | Literal["auto"] = Field(
        "auto", description="DeepSpeed's bf16 mode (bf16 weights, fp32 master copy). auto: on a GPU when policy.dtype "
        "resolves to bfloat16; a CPU computes in bf16 under torch.autocast over fp32 weights instead.")
    gradient_checkpointing: bool = False
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)


class TrainConfig(Section):
    algorithm: Literal["ppo", "grpo", "reinforce_pp"] = "grpo"
    init_from: str = Field("sft", description="'sft', 'base', or a path / models:/ URI")
    steps: int = Field(20, ge=0)
    prompts_per_step: int = Field(
        16, ge=1, description="Prompts per step over all data-parallel ranks (each rank rolls out its share)."
    )
    num_generations: int = Field(5, ge=1, description="Samples per prompt (GRPO group size).")
    ppo_epochs: int = Field(1, ge=1)
    minibatch_size: int = Field(
        16, ge=1, description="Samples per optimizer step over all ranks; divisible by accumulation steps x ranks."
    )
    lr: float = Field(1e-6, gt=0)
    critic_lr: float = Field(1e-5, gt=0)
    critic_warmup: int = Field(
        0, ge=0, description="PPO: steps at the start that train only the critic (verl's critic_warmup), so the "
        "actor's first advantages come from values fitted to its returns, not from a fresh value head.",
    )
    critic_epochs: int | None = Field(
        None, ge=1, description="PPO: passes of minibatch updates the critic makes per step (verl's critic.ppo_epochs); "
        "None: train.ppo_epochs. More passes fit the values without moving the actor further.",
    )
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant",
        description="After warmup: constant (verl's default), or decay to 0 at train.steps, linearly (TRL's default) "
        "or on a cosine. On the demo, linear decay changed which rollout seed did well, not the mean gain "
        "(docs/results.md), so it stays constant there.",
    )
    kl_coef: float = Field(0.001, ge=0)
    kl_estimator: Literal["k1", "k3", "low_var_kl"] = "low_var_kl"
    kl_in_reward: bool = False
    loss_agg: Literal["token_mean", "seq_mean"] = Field(
        "token_mean",
        description="Policy/value loss over a minibatch: mean over all its unmasked tokens (verl's token-mean), "
        "or mean over sequences of each sequence's token mean. Either is independent of the micro-batch split.",
    )
    filter_groups: bool = Field(
        False,
        description="Train only on groups whose rewards are not all equal (DAPO's dynamic sampling, without "
        "re-sampling): the others have zero advantage and only dilute the loss and cost time.",
    )
    clip_range: float = Field(0.2, gt=0)
    clip_range_value: float = Field(0.2, gt=0)
    entropy_coef: float = Field(0.001, ge=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(1.0, ge=0, le=1)
    mask_retrieved: bool = Field(True, description="Exclude <information> tokens from the loss (paper ablation: false).")
    mask_critic: bool | None = Field(
        None, description="Mask retrieved tokens in the value loss and GAE too (default: as train.mask_retrieved)."
    )
    logprob_chunk: int = Field(
        1024, ge=0, description="Policy-token positions per chunk of the LM head when scoring (bounds full-vocabulary "
        "logits memory to chunk x vocab; logits are computed at the policy's own tokens only); 0 = one pass."
    )
    save_every: int = Field(10, ge=1)
    eval_every: int = Field(10, ge=1)
    eval_size: int = Field(64, ge=1)
    seed: int = 0
    stop_on_collapse: bool = False
    collapse_min_entropy: float = Field(0.01, ge=0, description="Warn when mean token entropy falls below this.")
    collapse_max_kl: float = Field(1.0, gt=0, description="Warn when the KL to the reference exceeds this.")
    collapse_reward_drop: float = Field(
        0.5, gt=0, le=1, description="Warn when the 5-step mean reward loses this fraction of its best value."
    )
    sync_timeout_s: float = Field(600, gt=0)
    sync_bucket_mb: int = Field(
        512, ge=1, description="Weights pushed to an external rollout engine (vLLM) per bucket: under ZeRO-3 one "
        "bucket is gathered at a time, so this bounds the extra memory of a sync."
    )
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    lora: LoraConfig = Field(
        default_factory=LoraConfig, description="Train LoRA adapters of the policy (and of the PPO critic, whose value "
        "head trains in full); the KL reference is then the actor with its adapters off, not a copy. final_dir gets "
        "the merged weights and the adapter in final_dir/adapter."
    )
    launcher: Literal["none", "deepspeed", "torchrun"] = Field("none", description="Flows run train in-process or under this launcher.")
    num_gpus: int = Field(1, ge=1, description="Processes (GPUs) per node for the launcher.")
    num_nodes: int = Field(1, ge=1)
    hostfile: str | None = Field(None, description="DeepSpeed hostfile for multi-node runs ('host slots=N' lines).")
    master_port: int | None = Field(None, ge=1, le=65535)
    out_dir: str = "checkpoints"
    final_dir: str = "models/policy"

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        """Combinations that would be silently ignored or contradict each other are errors naming both keys."""
        if self.mask_critic is None:
            self.mask_critic = self.mask_retrieved
        gas = self.deepspeed.gradient_accumulation_steps
        problems = []
        if self.mask_critic and not self.mask_retrieved:
            problems.append("train.mask_critic=true with train.mask_retrieved=false: the critic would skip tokens the "
                            "policy is trained on; set both (or leave mask_critic unset)")
        if self.kl_in_reward and self.algorithm == "grpo":
            problems.append("train.kl_in_reward=true with train.algorithm=grpo: GRPO's advantages read only the outcome "
                            "reward, so the KL would be dropped; use the KL loss (kl_in_reward=false) or ppo/reinforce_pp")
        if self.kl_in_reward and self.kl_coef == 0:
            problems.append("train.kl_in_reward=true with train.kl_coef=0: there is no KL to put in the reward")
        if self.algorithm == "reinforce_pp" and self.kl_coef > 0 and not self.kl_in_reward:
            problems.append("train.algorithm=reinforce_pp puts its KL in the reward: set train.kl_in_reward=true "
                            "(or train.kl_coef=0)")
        if self.filter_groups and self.algorithm != "grpo":
            problems.append(f"train.filter_groups=true with train.algorithm={self.algorithm}: only GRPO groups with equal "
                            "rewards have zero advantage; filtering would drop signal")
        if self.filter_groups and self.num_generations < 2:
            problems.append("train.filter_groups=true needs groups: set train.num_generations >= 2")
        if self.minibatch_size % gas:
            problems.append(f"train.minibatch_size={self.minibatch_size} must be divisible by "
                            f"train.deepspeed.gradient_accumulation_steps={gas}")
        if (self.prompts_per_step * self.num_generations) % self.minibatch_size:
            problems.append(f"train.prompts_per_step x train.num_generations = {self.prompts_per_step * self.num_generations} "
                            f"samples per step must be divisible by train.minibatch_size={self.minibatch_size}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class EvaluationConfig(Section):
    methods: list[Literal["direct", "rag", "search-r1"]] = ["direct", "rag", "search-r1"]
    models: list[str] = Field(default_factory=lambda: ["base", "sft", "policy"])
    max_examples: int | None = Field(None, ge=1)
    question_types: str | None = Field(
        None, description="jsonl of {id, type} to break results down by question type when the test rows carry no "
        "metadata.type (analysis only; never used to train)."
    )
    batch_size: int = Field(32, ge=1)
    bootstrap_samples: int = Field(1000, ge=0)
    out_dir: str = "reports/eval"
    home_eval: str | None = Field(
        None, description="eval.json of the same models on the world they were trained on: this evaluation is then "
        "a transfer evaluation (`make check-transfer`), and eval.md sets its EM, valid actions, repeated turns and "
        "searches beside the home ones."
    )


class RegistryConfig(Section):
    model_name: str = "searchr1-policy"
    metric: Literal["em"] = Field("em", description="The paired comparison with the champion is on exact match.")
    margin: float = Field(
        0.0, ge=0, description="Champion only when the lower bound of the paired 95% CI of challenger - champion "
        "EM on the same questions exceeds this."
    )
    artifact: Literal["merged", "adapter"] = Field(
        "merged", description="What a registered version is, when training used LoRA: the merged weights (a plain "
        "checkpoint) or the adapter alone (train.final_dir/adapter: small, loaded on its base model, which must be "
        "where its adapter_config.json says). Both are logged to the run either way."
    )


class TrackingConfig(Section):
    tracking_uri: str = Field("sqlite:///mlflow.db", description="Overridden by MLFLOW_TRACKING_URI.")
    experiment: str = "searchr1"
    artifact_location: str | None = Field(None, description="Default: ./mlartifacts beside the store.")
    enabled: bool = True


class Settings(Section):
    """All of params.yaml."""

    seed: int = 0
    world: WorldConfig = WorldConfig()
    corpus: CorpusConfig = CorpusConfig()
    qa: QAConfig = QAConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    policy: PolicyConfig = PolicyConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    sft: SFTConfig = SFTConfig()
    train: TrainConfig = TrainConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    registry: RegistryConfig = RegistryConfig()
    tracking: TrackingConfig = TrackingConfig()


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{source}: {key}: {msg}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value as YAML, so ``1e-5``, ``true``, ``[a, b]`` work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.lr=1e-5")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r}: empty key")
    # YAML reads 1e-5 as a string; pydantic's lax mode turns it into the float the field wants.
    value = yaml.safe_load(raw) if raw.strip() else None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


PROFILES_DIR = Path("profiles")


def profile_overrides(profile: str | Path, params: str | Path | None = None) -> list[str]:
    """The ``KEY=VALUE`` overrides of a profile: a YAML file, or a name looked up as
    ``profiles/<name>.yaml`` here and then beside the settings file ``params`` (so a stage run in a
    sub-folder with ``--params ../../params.yaml`` finds the project's profiles). Nested like
    params.yaml, holding only the keys it changes."""
    path = Path(profile)
    folders = [PROFILES_DIR] + ([Path(params).parent / PROFILES_DIR] if params is not None else [])
    if not path.exists():
        path = next((d / f"{profile}.yaml" for d in folders if (d / f"{profile}.yaml").exists()), path)
    if not path.exists():
        known = sorted({p.stem for d in folders if d.is_dir() for p in d.glob("*.yaml")})
        raise ConfigError(f"profile {profile!r}: no such file (profiles here: {', '.join(known) or 'none'})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return [f"{key}={_yaml_scalar(value)}" for key, value in flatten(data).items()]


def _yaml_scalar(value: Any) -> str:
    """``value`` as the one-line YAML an override carries (scalars get no document-end marker)."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text[: -len("...")].strip() if text.endswith("\n...") else text


def load_settings(path: str | Path | None = "params.yaml", overrides: list[str] | None = None) -> Settings:
    """Read params.yaml (missing file → defaults), apply ``KEY=VALUE`` overrides, validate."""
    data: dict = {}
    source = "<defaults>"
    if path is not None and Path(path).exists():
        source = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    elif path is not None and str(path) != "params.yaml":
        raise ConfigError(f"{path}: settings file not found")
    data = apply_overrides(data, overrides or [])
    try:
        return Settings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def dump_settings(settings: Settings) -> str:
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
