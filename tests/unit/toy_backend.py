"""A toy rollout backend registered from its own module: it answers every prompt with the same
two tokens, and its behaviour log-probs are the loaded weight version's negative (so a test sees
which weights "sampled"). ``ppo.rollout_backend=tests.unit.toy_backend:SPEC`` finds it
(``rlhf.rollout.backends.backend_spec`` imports this module on first use). Used by
``tests/unit/test_toy_backend.py``; copy both to add a backend (docs/extending.md)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.rollout.backends import BackendRequest, BackendSpec
from rlhf.rollout.hf import Rollout

NAME = "tests.unit.toy_backend:SPEC"
ANSWER = [7, 8]


@dataclass
class ToyTokenizer:
    eos_token_id: int = 2
    pad_token_id: int = 1


class ToyBackend:
    def __init__(self, req: BackendRequest):
        self.tokenizer, self.version, self.request = ToyTokenizer(), req.version, req

    def generate(self, prompts, sampling, on_batch=None):
        out = Rollout(list(prompts), ["ab"] * len(prompts), [[5, 6]] * len(prompts), [ANSWER] * len(prompts))
        out.version = self.version
        out.stop_ids = [self.tokenizer.eos_token_id] * len(prompts)  # each answer stopped at the EOS it sampled
        if on_batch is not None:
            on_batch(len(prompts))
        return out

    def load_weights(self, state_dict, version):
        self.version = version

    def logprobs(self, rollout, sampling):
        # the EOS the sample stopped at is an action too (rlhf.ppo.models.assemble)
        return [[-float(self.version)] * (len(ids) + 1) for ids in rollout.completion_ids]


SPEC = BackendSpec("toy", ToyBackend, behaviour_logprobs=True)
