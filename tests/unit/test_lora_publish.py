"""Publishing a LoRA policy (issue 28, item 11): the adapters are merged layer by layer into the
outgoing copies, equal to peft's whole-model merge, without copying the model."""

from __future__ import annotations

import copy

import pytest
import torch

from rlhf.models.lora import apply_lora, merged_model, merged_state_dict
from tests.hf_checkpoints import build_checkpoint, project_text


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_lora_publish_merges_per_layer_without_a_deep_copy(family, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    path = build_checkpoint(family, tmp_path / family, project_text(120))
    model = apply_lora(AutoModelForCausalLM.from_pretrained(path), {"r": 4, "alpha": 8, "dropout": 0.0})
    with torch.no_grad():  # trained adapters: B is zero at init, so give it values
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    expected = {k: v.clone() for k, v in merged_model(model).state_dict().items()}

    def no_copy(*args, **kwargs):
        raise AssertionError("the publish deep-copied the model")

    monkeypatch.setattr(copy, "deepcopy", no_copy)
    published = merged_state_dict(model)
    monkeypatch.undo()
    assert published.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(published[key], value, atol=1e-6, rtol=1e-6)
    assert any(
        not torch.equal(published[k], v) for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()
    )
    assert any("lora_A" in n for n, _ in model.named_parameters())  # the trained model keeps its adapters
