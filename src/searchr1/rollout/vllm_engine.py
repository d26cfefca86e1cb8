"""vLLM generation engine (GPU, `pip install searchr1[gpu]`): same protocol as HFEngine, much faster.

vLLM is imported lazily so CPU installs never need it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from searchr1.rollout.engine import Generation, SamplingSettings, repeating_tail, row_seeds


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


class VLLMEngine:
    def __init__(self, model_path: str, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.5, **llm_kwargs):
        from vllm import LLM

        self.llm = LLM(
            model=model_path,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            **llm_kwargs,
        )

    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, sampling: SamplingSettings, stop: Sequence[str] = (),
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        if not prompts:
            return []
        # A seed per request: a row's sample does not depend on the other requests of the call.
        params = [sampling_params(sampling, max_new_tokens, stop, s) for s in row_seeds(len(prompts), sampling.seed, seeds)]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [_to_generation(o.outputs[0]) for o in outs]

    def update_weights(self, weights) -> None:
        """Copy trainer weights (state dict or model) into the vLLM model, then drop cached KV prefixes."""
        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
        items = [(k, v.detach()) for k, v in state.items()]
        try:  # in-process worker (V0, or V1 with VLLM_ENABLE_V1_MULTIPROCESSING=0), as TRL's colocate mode
            model = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        except AttributeError:
            model = None
        if model is not None:
            model.load_weights(items)
        else:  # multiprocess V1 workers
            self.llm.apply_model(lambda m: m.load_weights(items))
        self.llm.reset_prefix_cache()


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
