"""The reward functions inside real trainers: TRL's GRPOTrainer (a tiny causal LM built from a config, two steps on
the CPU) takes its rewards from embrm, in-process and through `embrm serve`; verl's compute_score signatures."""

import asyncio
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
from realdata import needs_data
from synthdata import tiny_llama

from embrm.core import EmbrmError
from embrm.serve import REWARD_ENV, trl_reward, verl_compute_score, verl_compute_score_batch, verl_reward

pytestmark = [needs_data, pytest.mark.slow]

PROMPTS = ["Name a colour.", "What is two plus two?", "Say hello politely.", "Give me a fruit."]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_lm")
    tiny_llama(out, [" ".join(PROMPTS) + " blue four hello apple"] * 20, vocab_size=300, max_positions=128)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig.from_pretrained(out)).save_pretrained(out)
    return out


def grpo_two_steps(tiny_lm, tmp_path, reward):
    """Two GRPO steps with `reward`; returns what every call returned and the trainer's log."""
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    seen = []
    if hasattr(reward, "__await__") or reward.__code__.co_flags & 0x80:  # async def
        async def recorded(prompts, completions, **kwargs):
            seen.append((list(prompts), list(completions), await reward(prompts, completions, **kwargs)))
            return seen[-1][2]
    else:
        def recorded(prompts, completions, **kwargs):
            seen.append((list(prompts), list(completions), reward(prompts, completions, **kwargs)))
            return seen[-1][2]
    recorded.__name__ = "embrm_reward"
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), max_steps=2, per_device_train_batch_size=4,
                      num_generations=4, max_completion_length=8, learning_rate=1e-3, logging_steps=1,
                      report_to=[], use_cpu=True, save_strategy="no", bf16=False, seed=0)
    trainer = GRPOTrainer(model=str(tiny_lm), reward_funcs=[recorded], args=args,
                          train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
                          processing_class=PreTrainedTokenizerFast.from_pretrained(tiny_lm))
    trainer.train()
    return seen, [h for h in trainer.state.log_history if "rewards/embrm_reward/mean" in h]


def check_run(seen, logs, reward_model):
    assert len(seen) == 2 and len(logs) == 2
    for (prompts, completions, rewards), log in zip(seen, logs):
        assert len(rewards) == len(completions) == 4 and set(prompts) <= set(PROMPTS)
        np.testing.assert_allclose(rewards, reward_model.rewards(prompts, completions).rewards, atol=1e-5)
        assert log["rewards/embrm_reward/mean"] == pytest.approx(np.mean(rewards), abs=1e-4)


def test_trl_grpo_in_process(tiny_lm, tmp_path, reward_model):
    seen, logs = grpo_two_steps(tiny_lm, tmp_path, trl_reward(reward_model))
    check_run(seen, logs, reward_model)


def test_trl_grpo_through_the_server_async(tiny_lm, tmp_path, reward_model, server):
    seen, logs = grpo_two_steps(tiny_lm, tmp_path, trl_reward(server.url, asynchronous=True))
    check_run(seen, logs, reward_model)


def test_trl_chat_messages_and_errors(reward_model):
    reward = trl_reward(reward_model)
    chat = reward([[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]],
                  [[{"role": "assistant", "content": "Blue."}]])
    assert chat == pytest.approx(reward(["Name a colour."], ["Blue."]))
    with pytest.raises(EmbrmError, match="2 prompts for 1 completions"):
        reward(["a", "b"], ["c"])
    with pytest.raises(EmbrmError, match="string or a list of chat messages"):
        reward([3], ["c"])


def test_verl_compute_score_in_process_and_through_the_server(reward_model, server, monkeypatch):
    infos = [{"prompt": p, "index": i} for i, p in enumerate(PROMPTS)]
    answers = ["Blue.", "Four.", "Hello, nice to meet you.", "An apple."]
    expected = reward_model.rewards(PROMPTS, answers).rewards
    for source in (reward_model, server.url):
        single, batch = verl_reward(source)
        got = [single("alpaca", a, None, info)["score"] for a, info in zip(answers, infos)]
        np.testing.assert_allclose(got, expected, atol=1e-5)
        got = [d["score"] for d in batch(["alpaca"] * 4, answers, [None] * 4, infos)]
        np.testing.assert_allclose(got, expected, atol=1e-5)
    monkeypatch.setenv(REWARD_ENV, server.url)  # verl's custom_reward_function: module-level, configured by env
    assert verl_compute_score("alpaca", answers[0], None, infos[0])["score"] == pytest.approx(expected[0], abs=1e-5)
    assert [d["score"] for d in verl_compute_score_batch(["a"] * 4, answers, [None] * 4, infos)] == \
        pytest.approx(expected.tolist(), abs=1e-5)
    with pytest.raises(EmbrmError, match="extra_info of sample 0 has no prompt"):
        verl_reward(reward_model)[0]("alpaca", "Blue.", None, {"question_id": 3})


def test_the_readme_serving_block_runs_as_shown(fitted, server, monkeypatch):
    """The README's `python serve` block, with its model dir and URL pointed at the fixtures' and GRPOTrainer
    standing for TRL's: it calls each reward function the way the trainer does."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.findall(r"```python serve\n(.*?)```", readme, flags=re.S)[0]
    block = block.replace("http://127.0.0.1:8000", server.url)
    monkeypatch.chdir(fitted)  # `embrm fit --out models/lin` in a user's session: models/ and cache/ side by side
    (fitted / "models").mkdir(exist_ok=True)
    if not (fitted / "models" / "lin").exists():
        (fitted / "models" / "lin").symlink_to(fitted / "model")
    rewards = []

    def GRPOTrainer(model, reward_funcs, args, train_dataset):
        (reward,) = reward_funcs
        got = reward(prompts=PROMPTS, completions=["Blue."] * 4)
        rewards.append(asyncio.run(got) if inspect.iscoroutine(got) else got)

    names = {"GRPOTrainer": GRPOTrainer, "policy": None, "config": None, "data": None, "prompts": PROMPTS,
             "responses": ["Blue."] * 4}
    exec(compile(block, "README", "exec"), names)
    assert len(rewards) == 2 and rewards[0] == pytest.approx(rewards[1], abs=1e-5)
    assert names["compute_score"]("alpaca", "Blue.", None, {"prompt": PROMPTS[0]})["score"] == \
        pytest.approx(rewards[0][0], abs=1e-5)


def test_a_remote_reward_without_a_server_fails_in_one_line():
    from embrm.serve import RemoteRewards

    with pytest.raises(EmbrmError, match="ConnectError: is `embrm serve` running there"):
        RemoteRewards("http://127.0.0.1:9", tries=2).rewards(["a"], ["b"])
    with pytest.raises(EmbrmError, match="EMBRM_TEST_NO_KEY"):
        RemoteRewards("http://127.0.0.1:9", api_key_env="EMBRM_TEST_NO_KEY")


def test_a_remote_refusal_reaches_the_trainer_in_one_line(server):
    reward = trl_reward(server.url, settings={"aggregation": "max"})
    with pytest.raises(EmbrmError, match="answered 422: settings: aggregation"):
        reward(["Name a colour."], ["Blue."])
