"""Cold-start SFT: a plain PyTorch loop, cross-entropy on the policy's own turns only (retrieved
passages and the prompt are masked out, as in Search-R1's RL loss)."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from searchr1.io import DataError, atomic_path, iter_jsonl, read_json, write_json, write_jsonl
from searchr1.models.heads import logits_at
from searchr1.models.loading import POLICY_FILE, load_policy
from searchr1.models.lora import add_lora, save_policy
from searchr1.models.precision import compute_autocast, resolve_dtype
from searchr1.prompts import encode_prompt, format_passages
from searchr1.retrieval.base import Retriever
from searchr1.rollout.loop import fit_docs, fit_passages
from searchr1.rollout.types import Sample
from searchr1.sft.mining import compared_names, mine_paths, mining_report
from searchr1.sft.trajectories import (
    build_sft_examples,
    corpus_numbers,
    corpus_words,
    gold_queries,
    number_drills,
    numbers_by_length,
    swapped,
    with_new_names,
    with_other_values,
)

log = logging.getLogger(__name__)

LogFn = Callable[[dict, int], None]
RolloutFn = Callable[[object, object, list[dict]], Sequence[Sample]]  # (model, tokenizer, rows) -> samples


def tokenize_example(segments: Sequence[tuple[str, bool]], tokenizer, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 loss mask, tokenised segment by segment so the mask is exact and the ids
    match what the rollout produces (prompt, then each turn and each information block on its own).

    The first segment is the prompt (chat template if any). EOS follows a final trainable turn and
    is trainable: the policy must learn to stop after </answer>. Sequences are cut at ``max_len``.
    """
    (prompt, prompt_trainable), *rest = segments
    if prompt_trainable:
        raise ValueError("the first segment is the prompt and must not be trainable")
    ids = encode_prompt(tokenizer, prompt)
    mask = [0] * len(ids)
    for text, trainable in rest:
        seg = tokenizer(text, add_special_tokens=False).input_ids
        ids += seg
        mask += [int(trainable)] * len(seg)
    if rest and rest[-1][1]:
        ids.append(tokenizer.eos_token_id)
        mask.append(1)
    return ids[:max_len], mask[:max_len]


def longest_turn(loss_mask: Sequence[int]) -> int:
    """Length of the longest run of trainable tokens (one policy turn)."""
    best = run = 0
    for m in loss_mask:
        run = run + 1 if m else 0
        best = max(best, run)
    return best


def trainable_token_loss(model, batch: dict[str, torch.Tensor], num_targets: torch.Tensor | None = None) -> torch.Tensor:
    """Token-mean next-token cross-entropy over targets with loss_mask == 1, with logits computed at those
    positions only (models/heads.py): the prompt and retrieved passages, most of an example, are context
    and need no vocabulary-wide work. ``num_targets`` divides instead of this batch's own count: a
    micro-batch's share of a larger batch's token mean, so accumulated micro-batches give the whole
    batch's loss and gradient."""
    targets = batch["loss_mask"][:, 1:].bool()
    at = F.pad(targets, (0, 1))  # position t predicts token t + 1
    logits = logits_at(model, at, batch["input_ids"], share_prefix=True, attention_mask=batch["attention_mask"])
    ce = F.cross_entropy(logits.float(), batch["input_ids"][:, 1:][targets], reduction="sum")
    return ce / (targets.sum() if num_targets is None else num_targets).clamp(min=1)


def micro_batches(batch: dict[str, torch.Tensor], size: int | None):
    """Row slices of a right-padded batch, each cut to its own longest row (less padding to compute)."""
    rows = batch["input_ids"].shape[0]
    size = size or rows
    for start in range(0, rows, size):
        part = {k: v[start : start + size] for k, v in batch.items()}
        width = int(part["attention_mask"].sum(dim=1).max())
        yield {k: v[:, :width] for k, v in part.items()}


def batch_loss_backward(model, batch: dict[str, torch.Tensor], micro_batch_size: int | None,
                        compute_dtype: str = "float32") -> float:
    """Backward of the batch's token-mean loss, accumulated over micro-batches (the same gradient as
    one pass; peak memory of one micro-batch: its logits are trainable targets x vocab floats). The
    forward computes in ``compute_dtype`` (bf16 autocast on a CPU over the fp32 weights); the backward
    runs outside autocast and the cross-entropy in float32."""
    num_targets = batch["loss_mask"][:, 1:].sum()
    device = batch["input_ids"].device
    total = 0.0
    for part in micro_batches(batch, micro_batch_size):
        with compute_autocast(compute_dtype, device):
            loss = trainable_token_loss(model, part, num_targets)
        loss.backward()
        total += loss.item()
        del loss
    return total


def collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padding has attention 0 and loss mask 0."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    loss_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, mask) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        loss_mask[i, : len(ids)] = torch.tensor(mask)
    return {"input_ids": input_ids, "attention_mask": attention, "loss_mask": loss_mask}


def read_train_rows(path: str | Path) -> list[dict]:
    """Training questions; a row without id/question/golden_answers is an error naming file:line."""
    rows = []
    for lineno, row in iter_jsonl(path):
        for key in ("id", "question", "golden_answers"):
            if not row.get(key):
                raise DataError(f"{path}:{lineno}: missing or empty field {key!r}")
        rows.append(row)
    return rows


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _length_grouped_batches(lengths: list[int], batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """Shuffled batches of similar lengths (less padding, hence faster on CPU), in random order."""
    order = torch.randperm(len(lengths), generator=gen).tolist()
    chunk = batch_size * 32
    batches = []
    for start in range(0, len(order), chunk):
        group = sorted(order[start : start + chunk], key=lengths.__getitem__)
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def train_on_examples(
    model, tokenizer, tokenized: list[tuple[list[int], list[int]]], cfg, seed: int, log_fn: LogFn | None = None,
    compute_dtype: str = "float32",
) -> dict:
    """Train ``model`` in place on tokenised examples (``cfg`` is SFTConfig); returns metrics. The model's
    fp32 weights are the master weights; ``compute_dtype`` bfloat16 runs the forward in bf16 (see above)."""
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    batches_per_epoch = math.ceil(len(tokenized) / cfg.batch_size)
    total = cfg.epochs * batches_per_epoch
    trained = [p for p in model.parameters() if p.requires_grad]  # all of them, or the LoRA adapters
    decay = [p for p in trained if p.ndim >= 2]
    no_decay = [p for p in trained if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    warmup = int(cfg.warmup_ratio * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, total, warmup))
    model.train()
    losses, tokens, start = [], 0, time.perf_counter()
    bar = tqdm(total=total, desc="sft", unit="step")
    step = 0
    for _ in range(cfg.epochs):
        for indices in _length_grouped_batches([len(ids) for ids, _ in tokenized], cfg.batch_size, gen):
            batch = collate([tokenized[i] for i in indices], tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            opt.zero_grad(set_to_none=True)
            loss = batch_loss_backward(model, batch, cfg.micro_batch_size, compute_dtype)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm).item()
            opt.step()
            sched.step()
            tokens += int(batch["attention_mask"].sum())
            losses.append(loss)
            elapsed = time.perf_counter() - start
            row = {"sft/loss": losses[-1], "sft/lr": sched.get_last_lr()[0], "sft/grad_norm": grad_norm,
                   "sft/tokens_per_s": tokens / elapsed}
            if log_fn is not None:
                log_fn(row, step)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{row['sft/tokens_per_s']:.0f}")
            bar.update()
            step += 1
    bar.close()
    model.eval()
    elapsed = time.perf_counter() - start
    return {"loss_curve": losses, "steps": step, "tokens": tokens, "train_time_s": elapsed,
            "tokens_per_s": tokens / max(elapsed, 1e-9),
            "first_loss": losses[0] if losses else float("nan"), "final_loss": losses[-1] if losses else float("nan")}


def comparison_copies(records: list[dict], rows: Sequence[dict], paths: Sequence, cfg, build,
                      by_length: dict[int, list[str]] | None = None, seed: int = 0) -> list[dict]:
    """The extra copies of the comparison trajectories (``sft.comparison_copies`` in all). With
    ``sft.comparison_swaps`` half of them ask with the two names swapped, looked up in the other order
    (``swapped``): the same question's answer then follows from the values, not from the names' order.
    With ``sft.vary_values`` (and the corpus's numbers, ``by_length``) each copy reads other values of
    the same lengths and names the side they make win (``with_other_values``)."""
    compared = [r for r in records if r.get("comparison")]
    if not cfg.comparison_swaps:
        copies = compared * (cfg.comparison_copies - 1)
    else:
        ids = {r["id"] for r in compared}
        pairs = [(row, path) for row, path in zip(rows, paths) if row["id"] in ids]
        names = [compared_names(row["question"], [str(a) for a in row["golden_answers"]]) for row, _ in pairs]
        pairs = [(swapped(row, n), list(reversed(path))) for (row, path), n in zip(pairs, names) if len(n) == 2]
        swaps = [r for r in build([r for r, _ in pairs], [p for _, p in pairs]) if r.get("comparison")]
        originals = (cfg.comparison_copies + 1) // 2
        copies = compared * (originals - 1) + swaps * (cfg.comparison_copies - originals)
    if cfg.vary_values and by_length:
        rng = random.Random(seed)  # its own stream: the trajectories themselves stay as they were
        copies = [with_other_values(r, by_length, rng, cfg) or r for r in copies]
    return copies


def run_sft(
    settings, base_dir: str | Path, qa_train_path: str | Path, retriever: Retriever | None, out_dir: str | Path,
    log_fn: LogFn | None = None, rollout_fn: RolloutFn | None = None,
) -> dict:
    """Cold start: fine-tune the base policy on search trajectories for the training questions and
    save model + tokenizer (+ policy.json, a sample of the examples) atomically to ``out_dir``.

    ``sft.source=mined``: trajectories along search paths mined from each question, its answers and
    the corpus (``sft/mining.py``); ``sft.source=gold``: along the generator's gold queries, an upper
    bound that needs metadata real data does not have. Both search with the real ``retriever``.
    ``sft.source=rejection``: ``rollout_fn(model, tokenizer, rows)`` samples from the
    base policy and only finished, correct samples (reward >= 1) are kept, token ids and masks as sampled.
    """
    cfg = settings.sft
    mining: dict = {}
    dropped_long = 0
    rows = read_train_rows(qa_train_path)
    random.Random(settings.seed).shuffle(rows)
    rows = rows[: cfg.num_examples] if cfg.num_examples else rows

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_policy(str(base_dir), device=device)  # fp32 master weights for AdamW
    max_len = min(cfg.max_length, getattr(model.config, "max_position_embeddings", cfg.max_length))
    if cfg.source in ("mined", "gold"):
        if retriever is None:
            raise ValueError(f"sft.source={cfg.source} needs a retriever")
        rollout, topk = settings.rollout, settings.retrieval.topk

        def show(docs):  # the passages as the rollout shows them (fitted to max_obs_tokens)
            return fit_docs(tokenizer, docs, rollout.max_obs_tokens)[0]

        def observe(docs):  # the rollout's own rendering and truncation of retrieved passages
            return fit_passages(tokenizer, docs, rollout.max_obs_tokens)[0]

        def rag_context(docs):  # as the rollout's rag mode renders them
            return fit_passages(tokenizer, docs, rollout.max_obs_tokens, render=format_passages)[0]

        if cfg.source == "mined":
            mined = mine_paths(
                [r["question"] for r in rows], [r["golden_answers"] for r in rows], retriever, topk, show,
                max_hops=cfg.mine_max_hops, beam=cfg.mine_beam, candidates=cfg.mine_candidates,
                with_question_words=cfg.mine_question_words, comparisons=cfg.mine_comparisons,
            )
            paths = [None if p is None else p.queries for p in mined]
            mining = mining_report(rows, mined)
        else:
            paths = [gold_queries(r) for r in rows]
        def build(rows, paths):
            return build_sft_examples(rows, paths, retriever, topk, cfg, seed=settings.seed, template=rollout.template,
                                      observe=observe, rag_context=rag_context)

        records = build(rows, paths)
        numbers = []
        if cfg.number_drills or cfg.vary_values:
            numbers = corpus_numbers(row.get("contents", "") for _, row in iter_jsonl(settings.corpus.out_path))
        records += comparison_copies(records, rows, paths, cfg, build, numbers_by_length(numbers), settings.seed)
        if cfg.new_names:
            words = corpus_words(row.get("contents", "") for _, row in iter_jsonl(settings.corpus.out_path))
            rng = random.Random(settings.seed + 1)  # its own stream: the trajectories themselves stay as they were
            picked = [r for r in records if rng.random() < cfg.new_names]
            records += [c for r in picked if (c := with_new_names(r, words, rng, cfg.reword))]
        if cfg.number_drills:
            records += number_drills(numbers, cfg.number_drills, seed=settings.seed,
                                     pick=cfg.say_direction and cfg.mark_order)
        tokenized = [tokenize_example(ex["segments"], tokenizer, max_len) for ex in records]
        # A turn the rollout cannot finish within max_turn_tokens would teach an action the policy
        # can never complete: such examples are left out (and counted).
        fits = [longest_turn(mask) <= rollout.max_turn_tokens + 1 for _, mask in tokenized]  # + the trained EOS
        dropped_long = fits.count(False)
        if dropped_long:
            log.warning("sft: %d of %d examples have a turn longer than rollout.max_turn_tokens=%d: left out",
                        dropped_long, len(fits), rollout.max_turn_tokens)
        records = [r for r, ok in zip(records, fits) if ok]
        tokenized = [t for t, ok in zip(tokenized, fits) if ok]
    else:
        if rollout_fn is None:
            raise ValueError("sft.source=rejection needs a rollout_fn to sample trajectories from the base policy")
        samples = [s for s in rollout_fn(model, tokenizer, rows) if s.finished and s.reward >= 1.0]
        records = [s.to_record() for s in samples]
        tokenized = [
            ((s.prompt_ids + s.response_ids)[:max_len], ([0] * len(s.prompt_ids) + list(s.response_mask))[:max_len])
            for s in samples
        ]
    if not records:
        why = f" ({dropped_long} had a turn longer than rollout.max_turn_tokens)" if dropped_long else ""
        raise DataError(f"{qa_train_path}: no usable SFT example from sft.source={cfg.source}{why}")

    model.config.use_cache = False
    # LoRA: adapters on the target layers, the rest frozen; ``model`` itself carries them and trains.
    adapter = add_lora(model, cfg.lora, "sft.lora") if cfg.lora.enabled else None
    compute_dtype = resolve_dtype(settings.policy, device)
    log.info("cold start computes in %s (policy.dtype=%s)", compute_dtype, settings.policy.dtype)
    metrics = train_on_examples(model, tokenizer, tokenized, cfg, settings.seed, log_fn, compute_dtype)
    model.config.use_cache = True
    trajectories = [r for r in records if not r.get("number_drill")]
    metrics.update(
        questions=len(rows),
        examples=len(records),
        # questions with a search trajectory: copies ("q#swapped", "q#values-...") and rag examples not counted
        # (rejection sampling's records are samples, grouped by their prompt)
        coverage=len({r.get("group_id") or r["id"].split("#")[0] for r in trajectories if not r.get("rag")}) / len(rows),
        searches_per_example=sum(r["num_searches"] for r in trajectories) / max(len(trajectories), 1),
        number_drills=len(records) - len(trajectories),
        rag_examples=sum(r.get("rag", False) for r in records),
        new_name_copies=sum(r.get("new_names", False) for r in records),
        re_searched=sum(r.get("re_searched", False) for r in records),
        skipped_hop=sum(r.get("skipped_hop", False) for r in records),
        truncated=sum(len(ids) == max_len for ids, _ in tokenized),
        trainable_tokens=sum(sum(mask) for _, mask in tokenized),
        dropped_long_turn=dropped_long,
        **mining,
    )

    base_info = read_json(Path(base_dir) / POLICY_FILE) if (Path(base_dir) / POLICY_FILE).exists() else {}
    with atomic_path(out_dir) as tmp:
        if adapter is None:
            model.save_pretrained(tmp)
        else:  # the merged weights, what RL and evaluation load, and the adapter in out_dir/adapter
            save_policy(model, adapter, model.state_dict(), tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / POLICY_FILE, {**base_info, "source": f"sft ({cfg.source}) from {base_dir}", "sft_examples": len(records)})
        write_jsonl(tmp / "sft_examples.sample.jsonl", records[:100])
    return metrics
