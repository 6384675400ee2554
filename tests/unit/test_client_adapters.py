"""The TRL, verl and OpenRLHF reward functions against the in-process fake of the HTTP API:
framework call shapes, refused options, the empty-response reward on the checkpoint's scale."""

from __future__ import annotations

import functools
import inspect
import math
import pickle
from typing import Any

import pytest

from critic_rm_client import CriticRMError, RewardClient, adapters
from critic_rm_client.adapters import (
    OpenRLHFRewardFunc,
    TRLRewardFunc,
    base,
    empty_reward_from_info,
    make_openrlhf_reward_func,
    make_reward_function,
    make_trl_reward_func,
    make_verl_batch_compute_score,
    make_verl_compute_score,
    trl,
    verl,
)
from critic_rm_client.aio import AsyncRewardClient
from tests.unit.client_fake import (
    EMPTY_REWARD,
    END,
    URL,
    FakeRM,
    SyncASGITransport,
    expected_reward,
    make_app,
)


@pytest.fixture
def rm(monkeypatch: pytest.MonkeyPatch) -> FakeRM:
    """The fake, and every adapter's clients wired to it (adapters build their clients lazily
    from their settings, which hold no transport)."""
    import httpx

    fake = FakeRM()
    app = make_app(fake)
    monkeypatch.setattr(
        base, "RewardClient", functools.partial(RewardClient, transport=SyncASGITransport(app))
    )
    monkeypatch.setattr(
        base,
        "AsyncRewardClient",
        functools.partial(AsyncRewardClient, transport=httpx.ASGITransport(app=app)),
    )
    monkeypatch.setattr(verl, "_shared", {})
    return fake


# --------------------------------------------------------------------------- refused options


@pytest.mark.parametrize("framework", ["trl", "verl", "verl_batch"])
def test_a_misspelt_option_raises_naming_it(framework: str) -> None:
    with pytest.raises(TypeError, match=r"'num_critque'.*did you mean 'num_critiques'"):
        make_reward_function(framework, URL, num_critque=2)
    with pytest.raises(TypeError, match=r"'api_kye'.*did you mean 'api_key'"):
        make_reward_function(framework, URL, api_kye="k")


def test_options_of_another_framework_are_refused() -> None:
    with pytest.raises(TypeError, match="'prompt_keys'"):
        make_trl_reward_func(URL, prompt_keys=["q"])
    with pytest.raises(TypeError, match="'name'"):
        make_verl_compute_score(URL, name="x")
    # /get_reward samples at the checkpoint's defaults: an m for it would be silently ignored.
    with pytest.raises(TypeError, match="'num_critiques'"):
        make_openrlhf_reward_func(URL, num_critiques=2)
    with pytest.raises(ValueError, match="unknown framework"):
        make_reward_function("grpo", URL)


def test_verl_reward_kwargs_are_checked(rm: FakeRM) -> None:
    with pytest.raises(TypeError, match="'num_critque'"):
        adapters.compute_score("d", "yes", None, {"question": "q"}, url=URL, num_critque=2)
    assert rm.requests == []


# --------------------------------------------------------------------------- empty responses


def test_the_empty_reward_comes_from_the_checkpoints_reward_stats(rm: FakeRM) -> None:
    func = make_trl_reward_func(URL)
    rewards = func(prompts=["a", "b", "c"], completions=[" x", "", "  "])
    assert rewards == [expected_reward("a", " x"), EMPTY_REWARD, EMPTY_REWARD]
    assert func(prompts=["d"], completions=[""]) == [EMPTY_REWARD]
    assert len(rm.bodies("/info")) == 1  # read once per model version
    rm.version = lambda _i: "v2"
    func(prompts=["e", "f"], completions=["y", ""])
    assert len(rm.bodies("/info")) == 2  # a new version: its own statistics


def test_the_empty_reward_can_be_set_or_moved(rm: FakeRM) -> None:
    assert make_trl_reward_func(URL, empty_reward=-5.0)(["a"], [""]) == [-5.0]
    far = make_trl_reward_func(URL, empty_reward_stds=10.0)(["a"], [""])
    assert far == [pytest.approx(6.3 - 10 * 0.3)]
    assert rm.bodies("/score") == []  # an empty response is never sent
    with pytest.raises(ValueError, match="finite"):
        make_trl_reward_func(URL, empty_reward=float("nan"))


def test_a_checkpoint_without_reward_stats_asks_for_empty_reward(rm: FakeRM) -> None:
    rm.reward_stats = None
    func = make_verl_compute_score(URL)
    with pytest.raises(CriticRMError, match="empty_reward="):
        func("d", "", None, {"question": "q"})
    assert func("d", "ok", None, {"question": "q"}) == expected_reward("q", "ok")


def test_empty_reward_from_info() -> None:
    info = {"model_version": "v", "reward_stats": {"mean": 6.0, "std": 0.5}}
    assert empty_reward_from_info(info) == 4.5
    assert empty_reward_from_info(info, stds=1.0) == 5.5
    with pytest.raises(CriticRMError, match="'v'"):
        empty_reward_from_info({"model_version": "v", "reward_stats": None})


# --------------------------------------------------------------------------- TRL


def test_trl_with_plain_string_prompts_never_returns_none(rm: FakeRM) -> None:
    """An instruct policy on plain-string prompts often stops at once: those completions get
    a finite reward on the checkpoint's scale, never None (which TRL logs as NaN)."""
    func = make_trl_reward_func(URL, num_critiques=3)
    prompts = ["The sky is", "The sun is", "Water is"]
    completions = [" blue.", "", " wet and cold."]
    rewards = func(prompts=prompts, completions=completions, completion_ids=[[1], [], [2]])
    assert all(isinstance(r, float) and math.isfinite(r) for r in rewards)
    assert rewards == [
        expected_reward("The sky is", " blue."),
        EMPTY_REWARD,
        expected_reward("Water is", " wet and cold."),
    ]
    assert func.__name__ == "critic_rm"
    sent = rm.bodies()[0]
    assert len(sent["items"]) == 2  # the empty completion is never sent
    assert sent["num_critiques"] == 3 and sent["truncate_prompt"] is True


def test_trl_with_conversational_inputs(rm: FakeRM) -> None:
    func = make_trl_reward_func(URL, name="critic", empty_reward=-5.0)
    prompts = [
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}],
        [{"role": "user", "content": "Capital of France?"}],
    ]
    completions = [
        [{"role": "assistant", "content": "4"}],
        [{"role": "assistant", "content": "  "}],
    ]
    rewards = func(prompts, completions, trainer_state=object(), answer=["4", "Paris"])
    assert func.__name__ == "critic"
    assert rewards == [expected_reward(prompts[0], "4"), -5.0]
    assert rm.bodies()[0]["items"] == [{"prompt": prompts[0], "response": "4"}]


def test_trl_completion_text_takes_the_assistant_turns() -> None:
    completion = [
        {"role": "assistant", "content": "Let me look.", "tool_calls": [{"name": "f"}]},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": [{"type": "text", "text": "It is 42."}]},
    ]
    assert trl._completion_text(completion) == "Let me look.\n\nIt is 42."
    assert trl._completion_text([{"content": "no role"}]) == "no role"


def test_reward_functions_pickle_without_their_client() -> None:
    func = make_trl_reward_func(URL, api_key="k")
    assert isinstance(func.client, RewardClient)
    copy = pickle.loads(pickle.dumps(func))
    assert isinstance(copy, TRLRewardFunc)
    assert copy.__name__ == "critic_rm" and copy._client is None
    assert copy.settings == func.settings
    assert isinstance(copy.client, RewardClient)
    func.close()
    copy.close()


# --------------------------------------------------------------------------- verl


def test_verl_compute_score_reads_the_prompt_from_extra_info(rm: FakeRM) -> None:
    score = make_verl_compute_score(URL, num_critiques=2)
    value = score("openai/gsm8k", "#### 72", "72", extra_info={"question": "How many?"})
    assert value == expected_reward("How many?", "#### 72")
    chat = [{"role": "user", "content": "Hi"}]
    assert score("hh", "Hello", None, extra_info={"prompt": chat}) == expected_reward(chat, "Hello")
    assert score("hh", "", None, extra_info={"prompt": "x"}) == EMPTY_REWARD  # no /score request
    with pytest.raises(ValueError, match="extra_info"):
        score("hh", "Hello", None, extra_info={"index": 3})
    assert len(rm.bodies()) == 2


class ObjectArray(list[Any]):
    """Stands in for the numpy object arrays verl keeps in non_tensor_batch."""

    def tolist(self) -> list[Any]:
        return list(self)


def test_verl_batch_compute_score(rm: FakeRM) -> None:
    score = make_verl_batch_compute_score(URL, empty_reward=-1.0, max_batch_items=2)
    chat = ObjectArray([{"role": "user", "content": "q2"}])
    infos: list[dict[str, Any]] = [
        {"question": "q0"},
        {"prompt": "q1", "question": "ignored"},
        {"prompt": chat},
    ]
    values = score(["d"] * 3, ["a0", "", "a2"], [None] * 3, infos)
    assert values == [expected_reward("q0", "a0"), -1.0, expected_reward(list(chat), "a2")]
    assert [len(b["items"]) for b in rm.bodies()] == [2]


async def test_verl_async_entry_points_match_the_sync_ones(rm: FakeRM) -> None:
    # verl's reward loop awaits a coroutine function on its loop, and runs a plain one in a
    # thread pool: it tells them apart with inspect.iscoroutinefunction.
    assert inspect.iscoroutinefunction(adapters.compute_score_async)
    assert not inspect.iscoroutinefunction(adapters.compute_score)
    score = make_verl_compute_score(URL)
    assert inspect.iscoroutinefunction(score.acall)
    info = {"question": "ok?"}
    assert await score.acall("d", "yes", None, info) == expected_reward("ok?", "yes")
    assert await score.acall("d", "", None, info) == EMPTY_REWARD
    kwargs: dict[str, Any] = {"url": URL, "num_critiques": 1}
    via_module = await adapters.compute_score_async(
        data_source="d", solution_str="yes", ground_truth=None, extra_info=info, **kwargs
    )
    assert via_module == expected_reward("ok?", "yes")


def test_verl_module_entry_points_take_reward_kwargs(
    rm: FakeRM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(verl.API_KEY_ENV, "env-key")
    kwargs: dict[str, Any] = {"url": URL, "num_critiques": 1}
    # As the reward loop calls it: keywords, with the reward-model extras it adds.
    one = adapters.compute_score(
        data_source="d",
        solution_str="yes",
        ground_truth=None,
        extra_info={"question": "ok?"},
        reward_router_address=None,
        reward_model_tokenizer=None,
        **kwargs,
    )
    again = adapters.compute_score("d", "no", None, {"question": "ok?"}, **kwargs)
    batch = adapters.compute_score_batch(
        ["d"], ["yes"], [None], [{"question": "ok?"}], url=URL, prompt_keys=["question"]
    )
    assert one == batch[0] == expected_reward("ok?", "yes")
    assert again == expected_reward("ok?", "no")
    assert len(verl._shared) == 2  # one adapter per distinct setting, reused
    assert rm.requests[0][2]["authorization"] == "Bearer env-key"
    monkeypatch.delenv(verl.API_KEY_ENV)
    monkeypatch.delenv(verl.URL_ENV, raising=False)
    with pytest.raises(ValueError, match=verl.URL_ENV):
        adapters.compute_score("d", "x", None, {"question": "q"})


# --------------------------------------------------------------------------- OpenRLHF


def test_openrlhf_reward_func(rm: FakeRM) -> None:
    func = make_openrlhf_reward_func(URL, max_batch_items=2)
    assert isinstance(func, OpenRLHFRewardFunc)
    prompts = [f"<|im_start|>user\nq{i}{END}\n<|im_start|>assistant\n" for i in range(3)]
    queries = [prompts[0] + "4" + END, prompts[1] + END, prompts[2] + "Paris." + END]
    out = func(queries, prompts, ["4", "x", "Paris"])
    assert out["rewards"] == [
        expected_reward(prompts[0], "4"),
        EMPTY_REWARD,  # only the end-of-turn marker: empty, never sent
        expected_reward(prompts[2], "Paris."),
    ]
    assert out["scores"] == out["rewards"]
    assert out["extra_logs"] == {"critic_rm_reward_std": [0.5, 0.0, 0.5]}
    assert [len(b["query"]) for b in rm.bodies("/get_reward")] == [2]
