"""Token-level hybrid decoding with two tiny transformers models that share a tokenizer: the KV-cache
bookkeeping is checked against each model's own greedy output."""

import pytest
from helpers.chat_models import WEATHER_TOOL, ScriptedModel
from supertiny.errors import ConfigError
from supertiny.models.backend import GenerationOptions
from supertiny.models.transformers_backend import TransformersChatModel
from supertiny.policy.hybrid import hybrid_generate
from supertiny.policy.policy_store import ActivePolicy, policy_kind
from supertiny.policy.pool import ModelPool
from supertiny.policy.router import Router, RouteRequest
from supertiny.policy.token_rewards import TinyMarginReward, TinyProbabilityReward
from supertiny.schema import Message, ToolSpec

MESSAGES = [{"role": "user", "content": "What is the weather in Paris in celsius?"}]
TOOLS = [WEATHER_TOOL]
OPTIONS = GenerationOptions(max_new_tokens=24)


class EveryThirdToLlm:
    """A reward that sends positions 0, 3, 6 ... to the LLM (random tiny models hesitate everywhere alike)."""

    name = "every-third"
    description = "test reward"

    def score(self, proposal) -> float:
        return 0.0 if proposal.position % 3 == 0 else 1.0


@pytest.fixture(scope="module")
def pair(tiny_model_dir, tiny_teacher_dir):
    return TransformersChatModel.load(tiny_model_dir), TransformersChatModel.load(tiny_teacher_dir)


def test_threshold_zero_is_the_tiny_models_own_greedy_output(pair):
    tiny, llm = pair
    result = hybrid_generate(tiny, llm, MESSAGES, TOOLS, OPTIONS, threshold=0.0, reward=TinyProbabilityReward())
    assert result.llm_token_share == 0.0 and set(result.sources) == {"t"}
    assert result.generation.token_ids == tiny.generate(MESSAGES, TOOLS, OPTIONS).token_ids


def test_threshold_above_one_is_the_llms_own_greedy_output(pair):
    tiny, llm = pair
    result = hybrid_generate(tiny, llm, MESSAGES, TOOLS, OPTIONS, threshold=1.01, reward=TinyProbabilityReward())
    own = llm.generate(MESSAGES, TOOLS, OPTIONS)
    assert result.llm_token_share == 1.0
    assert result.generation.token_ids == own.token_ids
    assert result.generation.text == own.text


def test_mixed_tokens_are_each_models_greedy_choice_given_the_shared_prefix(pair):
    """With some tokens from each model, every token must be the argmax of the model that supplied it
    given everything before it: a full re-forward of each model checks the lazy LLM catch-up."""
    import torch

    tiny, llm = pair
    result = hybrid_generate(tiny, llm, MESSAGES, TOOLS, OPTIONS, threshold=0.5, reward=EveryThirdToLlm())
    assert result.sources == "LttLttLttLttLttLttLttLtt"  # the LLM catches up on two tokens each time
    tokens = result.generation.token_ids
    for model, letter in ((tiny, "t"), (llm, "L")):
        prompt = model.tokenizer(model.render_prompt(MESSAGES, TOOLS), add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = model.model(torch.tensor([prompt + tokens])).logits[0]
        for index, source in enumerate(result.sources):
            if source == letter:
                assert int(logits[len(prompt) + index - 1].argmax()) == tokens[index], (letter, index)


def test_other_rewards_plug_in(pair):
    tiny, llm = pair
    result = hybrid_generate(tiny, llm, MESSAGES, TOOLS, OPTIONS, threshold=0.0, reward=TinyMarginReward())
    assert result.llm_token_share == 0.0 and all(0 <= score <= 1 for score in result.scores)


def test_incompatible_tiers_are_a_clear_error(pair, tmp_path):
    from supertiny.testing import build_tiny_model

    tiny, _ = pair
    with pytest.raises(ConfigError, match="weights in this process"):
        hybrid_generate(tiny, ScriptedModel("remote"), MESSAGES, TOOLS, OPTIONS, 0.5, TinyProbabilityReward())
    other = TransformersChatModel.load(build_tiny_model(tmp_path / "other-vocab", vocab_size=400))
    with pytest.raises(ConfigError, match="one vocabulary"):
        hybrid_generate(tiny, other, MESSAGES, TOOLS, OPTIONS, 0.5, TinyProbabilityReward())


def test_the_hybrid_token_policy_reports_the_llm_share(pair):
    tiny, llm = pair
    pool = ModelPool(lambda name: None)
    pool.add("student", tiny)
    pool.add("teacher", llm)
    kind = policy_kind("hybrid-token")
    request = RouteRequest(request_id="r1", messages=[Message(**MESSAGES[0])], tools=[ToolSpec(**WEATHER_TOOL)],
                           options=OPTIONS)
    for threshold, share in ((0.0, 0.0), (1.01, 1.0)):
        policy = ActivePolicy(id=1, route="r", version=1, kind="hybrid-token", policy=kind,
                              params=kind.parse_params({"tiny": "student", "llm": "teacher", "threshold": threshold}))
        outcome = Router(pool).route(policy, request)
        assert outcome.llm_token_share == share and outcome.role == "hybrid"
        assert outcome.model == f"{tiny.name}+{llm.name}"
        detail = outcome.log_detail()
        assert len(detail["token_scores"]) == detail["tokens"] == outcome.generation.completion_tokens
