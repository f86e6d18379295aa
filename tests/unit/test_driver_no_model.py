"""The driver never loads a user's model (issue 28, item 8): ``rlhf sft --set model.path=DIR`` stages
the workers' ``init/`` by linking the checkpoint's weights, and the parameter count comes from a
meta-device model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from jobs.sft import stage_init
from rlhf.config.core import build_config
from rlhf.models.modeling import count_parameters
from tests.hf_checkpoints import build_checkpoint, project_text


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_model_path_init_is_staged_without_loading_the_model(family, tmp_path, monkeypatch):
    src = build_checkpoint(family, tmp_path / "src", project_text(120))
    expected = AutoModelForCausalLM.from_pretrained(src)
    cfg = build_config({}, [f"model.path={src}"])

    def no_load(*args, **kwargs):
        raise AssertionError("the driver loaded the model")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_load)
    tokenizer, n_params = stage_init(cfg, [], tmp_path / "run" / "init", "seed: 0\n")
    monkeypatch.undo()
    assert n_params == count_parameters(expected)
    init = tmp_path / "run" / "init"
    staged = AutoModelForCausalLM.from_pretrained(init)
    assert all(torch.equal(v, staged.state_dict()[k]) for k, v in expected.state_dict().items())
    assert AutoTokenizer.from_pretrained(init).get_vocab() == AutoTokenizer.from_pretrained(src).get_vocab()
    assert tokenizer.pad_token is not None and (init / "rlhf_config.yaml").is_file()
    weights = next(init.glob("*.safetensors"))
    assert weights.stat().st_ino == (src / weights.name).stat().st_ino  # linked, not copied


def test_added_tokens_still_load_and_save(tmp_path):
    src = build_checkpoint("gpt2", tmp_path / "src", project_text(120))
    cfg = build_config({}, [f"model.path={src}", "model.add_scratchpad_tokens=true"])
    tokenizer, _ = stage_init(cfg, [], tmp_path / "init", "seed: 0\n")
    assert len(AutoTokenizer.from_pretrained(tmp_path / "init")) == len(tokenizer)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "init").get_input_embeddings().num_embeddings >= len(
        tokenizer
    )


def test_models_load_in_their_target_dtype_straight_onto_their_device(tmp_path, monkeypatch):
    """A frozen bf16 model is read as bf16 (no fp32 host copy first) and a CUDA one straight onto the GPU
    (``device_map``); the loader's arguments are checked here, where there is no GPU."""
    from rlhf.models.device import Placement
    from rlhf.models.modeling import load_model_dir

    src = build_checkpoint("qwen2", tmp_path / "src", project_text(120))
    calls = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(path, **kwargs):
        calls.append(kwargs)
        return real(path, dtype=kwargs["dtype"])  # loaded here on the CPU whatever the device asked

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)  # no CUDA to move to
    model, _ = load_model_dir(src, placement=Placement("cuda", "bf16"))
    assert calls[-1] == {"dtype": torch.bfloat16, "device_map": "cuda"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    load_model_dir(src, placement=Placement("cpu", "bf16"))
    assert calls[-1] == {"dtype": torch.bfloat16}
    load_model_dir(src, device="cuda")  # a mirror or a trained model: fp32, on the GPU
    assert calls[-1] == {"dtype": torch.float32, "device_map": "cuda"}
