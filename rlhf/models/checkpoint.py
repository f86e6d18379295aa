"""Atomic Hugging Face checkpoints: written to a temporary sibling, then renamed into place.

A crash mid-save leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

CONFIG_NAME = "rlhf_config.yaml"


def save_hf_dir(
    model, tokenizer, path: str | Path, extra_files: dict[str, str] | None = None, write_extra=None, state_dict=None
) -> Path:
    """``save_pretrained`` model and tokenizer (plus small text files) into ``path`` atomically;
    ``write_extra(tmp_dir)``, when given, adds more files before the directory is published. A LoRA
    model is saved with its adapters merged: a plain HF model (``rlhf.models.lora.merged_model``).
    ``state_dict``: the weights to write instead of the model's own (a sharded model's, gathered by
    ``rlhf.models.fsdp.iter_full_state``)."""
    from rlhf.models.lora import merged_model

    model = merged_model(model)
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; a checkpoint is meant to be shared
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if write_extra is not None:
            write_extra(tmp)
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            if old.exists():
                shutil.rmtree(old)
            dest.rename(old)
        tmp.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
