"""Model presets (Llama-style causal LMs built locally) and loading of HF checkpoint dirs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel

from rlhf.errors import CheckpointError

# hidden, layers, heads, intermediate. Parameter counts at the default 2,048-token vocabulary
# (tied embeddings): tiny ~1.1M, small ~10.6M, base ~30.6M; `rlhf sft` prints the exact count.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 352},
    "small": {"hidden_size": 320, "num_hidden_layers": 8, "num_attention_heads": 5, "intermediate_size": 864},
    "base": {"hidden_size": 512, "num_hidden_layers": 9, "num_attention_heads": 8, "intermediate_size": 1376},
    # a 768-wide, 12-layer Llama shape (~86M parameters at a 1,000-piece vocabulary): GPU benchmarks
    "medium": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 2048},
}


def llama_config(preset: str, vocab_size: int, max_seq_len: int, tokenizer=None) -> LlamaConfig:
    if preset not in PRESETS:
        raise CheckpointError(f"unknown model preset '{preset}' (choose from {', '.join(PRESETS)})")
    dims = PRESETS[preset]
    ids = {}
    if tokenizer is not None:
        ids = {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_seq_len,
        num_key_value_heads=dims["num_attention_heads"],
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        **dims,
        **ids,
    )


def build_model(config: LlamaConfig, seed: int) -> PreTrainedModel:
    """A freshly initialised causal LM; identical weights for the same config and seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def check_model_dir(path: str | Path) -> Path:
    """Raise a one-line ``CheckpointError`` unless ``path`` looks like an HF causal-LM dir."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"model directory not found: {p}")
    if not p.is_dir():
        raise CheckpointError(f"not a directory: {p}")
    cfg = p / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"not a Hugging Face model directory (no config.json): {p}")
    try:
        json.loads(cfg.read_text())
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"corrupt config.json in model directory: {p}") from None
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise CheckpointError(f"model directory has no weights (*.safetensors): {p}")
    return p


def load_model_dir(path: str | Path, dtype=torch.float32, placement=None, device: str | None = None):
    """Load (model, tokenizer) from a local HF dir, turning any load failure into one line.
    ``placement`` (``rlhf.models.device.Placement``): put the model, frozen, on its device and dtype.
    The weights are read in their target dtype (a frozen placement's) straight onto ``device`` (the
    placement's): a GPU model never passes through an fp32 copy in host memory."""
    p = check_model_dir(path)
    if placement is not None:
        dtype, device = placement.frozen_dtype, placement.device
    where = {"device_map": device} if device not in (None, "cpu") else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(p)
        model = AutoModelForCausalLM.from_pretrained(p, dtype=dtype, **where)
    except Exception as exc:  # noqa: BLE001 - any loader failure is a bad checkpoint to the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot load model directory {p}: {first}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if placement is not None:
        model = placement.place(model, trainable=False)
    return model, tokenizer


# a checkpoint's own files that ``stage_model_dir`` links into a run (the tokenizer's are written anew)
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
MODEL_FILES = ("config.json", "generation_config.json")


def open_tokenizer(path: str | Path):
    """The tokenizer of an HF dir as saved; a loader failure is one ``CheckpointError`` line."""
    p = check_model_dir(path)
    try:
        return AutoTokenizer.from_pretrained(p)
    except Exception as exc:  # noqa: BLE001 - any loader failure is a bad checkpoint to the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot load the tokenizer of {p}: {first}") from None


def load_tokenizer_dir(path: str | Path):
    """The tokenizer of an HF dir as ``load_model_dir`` gives it (a missing pad token is EOS), without the model."""
    tokenizer = open_tokenizer(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def count_parameters_dir(path: str | Path) -> int:
    """``count_parameters`` of an HF dir's model, built on the meta device (no weights read or allocated)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(check_model_dir(path))
    with torch.device("meta"):
        return count_parameters(AutoModelForCausalLM.from_config(config))


def stage_model_dir(src: str | Path, tokenizer, dest: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    """``dest`` as the HF dir of ``src``'s model with ``tokenizer``, without loading the model: its weight and
    config files hard-linked (copied across file systems; never written through), the tokenizer saved,
    ``extra_files`` written; published atomically like ``save_hf_dir``. What the driver does instead of
    loading and re-saving a checkpoint it does not change."""
    import os
    import shutil
    import tempfile

    src, dest = check_model_dir(src), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    tmp.chmod(0o755)
    try:
        tokenizer.save_pretrained(tmp)
        files = {f for pattern in WEIGHT_PATTERNS for f in src.glob(pattern)}
        files |= {src / name for name in MODEL_FILES if (src / name).is_file()}
        for f in sorted(files):
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
