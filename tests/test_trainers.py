"""Stage 2 trainers end to end on the tiny models: the loss goes down, the result reloads and
generates, its lineage is right, runs resume, and bad input is refused before training starts."""

import dataclasses
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import toy_domain
from helpers.scripted_chat import ScriptedChatModel, weather_oracle
from helpers.training import FAST, alternating, harvest_snapshot, wrong_answer
from supertiny.artifacts.facts import ModelFacts
from supertiny.config import Settings
from supertiny.errors import InvalidInputError, NotFoundError, ResourceError
from supertiny.models.versions import get_model_version, lineage, register_external
from supertiny.runs.pipeline import run_dir, train_model
from supertiny.store import Dataset
from supertiny.train import resources
from supertiny.train.dpo_config import DPOConfig
from supertiny.train.kd_config import KDConfig
from supertiny.train.rft_config import RFTConfig
from supertiny.train.sft_config import SFTConfig


@pytest.fixture
def env(sqlite_store, register_plugin, tmp_path, tiny_model_dir, tiny_teacher_dir):
    register_plugin(toy_domain, name="toy-domains")
    register_external(sqlite_store, tiny_model_dir, name="student")
    register_external(sqlite_store, tiny_teacher_dir, name="teacher")
    settings = Settings(home=tmp_path / "home", database_url=sqlite_store.url)
    return sqlite_store, settings


def _reload_and_generate(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Weather in Oslo in celsius?"}],
                                           tools=[toy_domain.WEATHER_TOOL], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    return model


def test_sft_lowers_the_loss_and_registers_a_reloadable_model_with_its_lineage(env):
    store, settings = env
    snapshot = harvest_snapshot(store, "weather")
    config = SFTConfig(**FAST, max_steps=8, learning_rate=5e-3)
    trained = train_model(store, settings, "sft", student="student", data="weather", config=config, name="s1")
    assert trained.metrics["loss_last"] < trained.metrics["loss_first"]
    assert trained.metrics["steps"] == 8 and trained.metrics["data_trained_tokens"] > 0
    assert trained.metrics["tokens_seen"] > 0 and trained.metrics["wall_time_s"] > 0
    row = get_model_version(store, "s1")
    assert (row.stage, row.algorithm, row.format, row.backend) == ("sft", "sft", "hf", "transformers")
    assert row.parent_id == get_model_version(store, "student").id and row.dataset_id == snapshot.id
    assert row.config["source"]["options"]["learning_rate"] == 5e-3 and row.config["source"]["data"] == "weather@1"
    assert row.param_count == get_model_version(store, "student").param_count and row.size_bytes > 0
    assert [version.name for version in lineage(store, "s1")] == ["s1", "student"]
    assert row.path == str(settings.models_dir / "s1")
    _reload_and_generate(row.path)
    # the registered row opens through the backend too (evaluation and serving use this path)
    from supertiny.runtime.loading import open_model

    assert open_model(store, "s1").generate([{"role": "user", "content": "hi"}]).completion_tokens > 0
    # the checkpoints are gone once the model is registered
    assert not (run_dir(settings, "s1") / "checkpoints").exists()


def test_sft_can_train_the_embedding_rows_of_the_chat_markup_tokens_it_writes(env):
    from safetensors.torch import load_file
    from supertiny.train.modeling import added_token_ids
    from transformers import AutoTokenizer

    store, settings = env
    harvest_snapshot(store, "weather")
    config = SFTConfig(**FAST, max_steps=4, learning_rate=5e-2, train_added_tokens=True)
    train_model(store, settings, "sft", student="student", data="weather", config=config, name="s-tokens")
    base, trained = get_model_version(store, "student"), get_model_version(store, "s-tokens")
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    markup = tokenizer.convert_tokens_to_ids(["<tool_call>", "</tool_call>"])
    plain = tokenizer("sunny", add_special_tokens=False)["input_ids"]
    assert added_token_ids(tokenizer, [[*plain, markup[0]], [markup[1]]]) == sorted(markup)

    def embedding(path):
        weights = {}
        for file in sorted(Path(path).glob("*.safetensors")):
            weights.update(load_file(file))
        return next(tensor for name, tensor in weights.items() if name.endswith("embed_tokens.weight")).float()

    before, after = embedding(base.path), embedding(trained.path)
    changed = (before - after).abs().sum(dim=1) > 0
    assert changed[markup].all()  # the records' tool calls open and close with these
    assert int(changed.sum()) <= len(tokenizer.added_tokens_decoder)  # and no ordinary token moved
    _reload_and_generate(trained.path)


def test_sft_full_fine_tuning_with_bf16_compute_changes_the_weights_and_keeps_the_dtype(env):
    import torch
    from transformers import AutoModelForCausalLM

    store, settings = env
    harvest_snapshot(store, "weather")
    config = SFTConfig(**FAST, max_steps=3, lora=False, learning_rate=1e-3, precision="mixed")
    trained = train_model(store, settings, "sft", student="student", data="weather", config=config, name="full")
    before = AutoModelForCausalLM.from_pretrained(get_model_version(store, "student").path)
    after = _reload_and_generate(trained.path)
    assert after.dtype == before.dtype == torch.float32
    layer = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(before.state_dict()[layer], after.state_dict()[layer])


class _StopAt:
    """A progress that interrupts training at one step, like Ctrl-C."""

    def __init__(self, step: int, phase: str = "training"):
        self.step, self.at_phase, self.phase_name = step, phase, ""

    def phase(self, description, total=None):
        self.phase_name = description

    def update(self, done, **info):
        if self.phase_name == self.at_phase and done == self.step:
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_from_its_last_checkpoint(env):
    store, settings = env
    harvest_snapshot(store, "weather")
    config = SFTConfig(**{**FAST, "save_steps": 2}, max_steps=4, learning_rate=5e-3)
    with pytest.raises(KeyboardInterrupt):
        train_model(store, settings, "sft", student="student", data="weather", config=config, name="r1",
                    progress=_StopAt(3))
    checkpoints = run_dir(settings, "r1") / "checkpoints"
    assert sorted(path.name for path in checkpoints.glob("checkpoint-*")) == ["checkpoint-2"]
    with pytest.raises(InvalidInputError, match=r"other settings \(differs in: max_steps\)"):
        train_model(store, settings, "sft", student="student", data="weather",
                    config=SFTConfig(**{**FAST, "save_steps": 2}, max_steps=5, learning_rate=5e-3), name="r1")
    trained = train_model(store, settings, "sft", student="student", data="weather", name="r1",
                          config=dataclasses.replace(config, threads=2))  # threads do not change the run
    assert trained.metrics["resumed_from_step"] == 2 and trained.metrics["steps"] == 4
    assert [point[0] for point in trained.metrics["loss_curve"]] == [1, 2, 3, 4]
    state = json.loads((run_dir(settings, "r1") / "run.json").read_text())
    assert state["status"] == "completed"
    with pytest.raises(InvalidInputError, match="already registered"):
        train_model(store, settings, "sft", student="student", data="weather", config=config, name="r1")


def test_bad_input_is_refused_before_training(env, monkeypatch):
    store, settings = env
    harvest_snapshot(store, "weather")
    config = SFTConfig(**FAST, max_steps=1)

    def train(**kwargs):
        return train_model(store, settings, kwargs.pop("algorithm", "sft"), **{
            "student": "student", "data": "weather", "config": config, **kwargs})

    with pytest.raises(NotFoundError, match="no dataset 'nope'"):
        train(data="nope")
    with store.session() as session:
        session.add(Dataset(name="hollow", version=1, domain="toy-weather", source={}, n_items=0))
    with pytest.raises(InvalidInputError, match="empty"):
        train(data="hollow")
    with pytest.raises(InvalidInputError, match="not domain 'toy-alerts'"):
        train(domain="toy-alerts")
    with pytest.raises(InvalidInputError, match="no record in split 'test'"):
        train(config=SFTConfig(**FAST, split="test"))
    with pytest.raises(NotFoundError, match="unknown model 'nobody'"):
        train(student="nobody")
    with pytest.raises(InvalidInputError, match="takes no --teacher"):
        train(teacher="teacher")
    with pytest.raises(InvalidInputError, match="needs a --teacher"):
        train(algorithm="kd", config=KDConfig(**FAST))
    with pytest.raises(InvalidInputError, match="must be at least 1"):
        train(config=SFTConfig(batch_size=0))
    with pytest.raises(NotFoundError, match="unknown trainer 'sfd'"):
        train(algorithm="sfd")
    monkeypatch.setattr(resources, "available_memory", lambda: 64 * 1024**2)
    with pytest.raises(ResourceError, match=r"needs about .* GiB of memory but only 0.1 GiB is available"):
        train()
    assert not run_dir(settings, "student-sft-weather-v1").exists()  # nothing was started
    train(check_memory=False)  # the check can be skipped
    assert get_model_version(store, "student-sft-weather-v1").stage == "sft"


def test_memory_estimate_grows_with_full_fine_tuning_and_a_teacher(monkeypatch):
    monkeypatch.setenv("SUPERTINY_CPU_BF16", "1")
    student = ModelFacts(param_count=494_000_000, dtype="bfloat16", hidden_size=896, num_layers=24,
                                   vocab_size=151_936)
    teacher = ModelFacts(param_count=1_540_000_000, dtype="bfloat16", hidden_size=1536, num_layers=28,
                                   vocab_size=151_936)
    lora = resources.estimate_training_bytes(SFTConfig(max_length=256), student, [])
    full = resources.estimate_training_bytes(SFTConfig(max_length=256, lora=False), student, [])
    kd = resources.estimate_training_bytes(SFTConfig(max_length=256), student, [teacher])
    assert 1.5 * resources.GIB < lora < full < 12 * resources.GIB
    assert kd - lora > teacher.param_count * 2
    # full fine-tuning of a bf16 model trains fp32 weights with bf16 compute by default
    assert resources.training_dtype(SFTConfig(lora=False), student) == ("float32", True)
    assert resources.training_dtype(SFTConfig(), student) == ("bfloat16", False)
    # a CPU that emulates bf16 trains in fp32 (an AVX2-only CPU ran bf16 matmuls ~100x slower)
    monkeypatch.setenv("SUPERTINY_CPU_BF16", "0")
    assert resources.training_dtype(SFTConfig(), student) == ("float32", False)
    assert resources.training_dtype(SFTConfig(lora=False), student) == ("float32", False)


def test_kd_lowers_the_divergence_to_the_teacher(env):
    store, settings = env
    snapshot = harvest_snapshot(store, "weather")
    config = KDConfig(**FAST, max_steps=8, learning_rate=5e-3, beta=0.5, temperature=2.0)
    trained = train_model(store, settings, "kd", student="student", teacher="teacher", data="weather",
                          config=config, name="k1")
    assert trained.metrics["loss_last"] < trained.metrics["loss_first"]
    # the toy domain has a system prompt: the teacher read it before every conversation
    assert trained.metrics["data_teacher_context"] == trained.metrics["data_kept"] > 0
    assert 0.0 <= trained.metrics["teacher_agreement"] <= 1.0
    row = get_model_version(store, "k1")
    source = row.config["source"]
    assert (row.stage, row.dataset_id, source["teacher"]) == ("kd", snapshot.id, "teacher")
    assert source["options"]["beta"] == 0.5
    _reload_and_generate(row.path)


def _kd_on_two_tasks(env, name, config):
    store, settings = env
    harvest_snapshot(store, "weather", limit=2)
    return train_model(store, settings, "kd", student="student", teacher="teacher", data="weather", config=config,
                       name=name)


def test_kd_without_teacher_context_gives_both_the_same_tokens(env):
    trained = _kd_on_two_tasks(env, "k3", KDConfig(**FAST, max_steps=1, teacher_context=False))
    assert trained.metrics["data_teacher_context"] == 0 and trained.metrics["data_kept"] > 0


def test_kd_on_whole_conversations_distils_the_prompt_tokens_too(env):
    with pytest.raises(InvalidInputError, match="the teacher must read the same tokens"):
        KDConfig(positions="all").validate()
    with pytest.raises(InvalidInputError, match="on-policy completions train answers only"):
        KDConfig(positions="all", teacher_context=False, on_policy=0.5).validate()
    with pytest.raises(InvalidInputError, match="unknown --positions 'prompt'"):
        KDConfig(positions="prompt").validate()
    answers = _kd_on_two_tasks(env, "k6", KDConfig(**FAST, max_steps=1, teacher_context=False))
    whole = _kd_on_two_tasks(env, "k7", KDConfig(**FAST, max_steps=1, teacher_context=False, positions="all"))
    assert whole.metrics["data_trained_tokens"] > 3 * answers.metrics["data_trained_tokens"]
    assert whole.metrics["loss_first"] is not None


def test_kd_can_distil_the_teacher_where_it_disagrees_with_the_verified_answer(env):
    store, _ = env
    with pytest.raises(InvalidInputError, match="unknown --disagreement 'ignore'"):
        KDConfig(disagreement="ignore").validate()
    trained = _kd_on_two_tasks(env, "k4", KDConfig(**FAST, max_steps=2, learning_rate=5e-3, disagreement="teacher"))
    assert get_model_version(store, "k4").config["source"]["options"]["disagreement"] == "teacher"
    assert trained.metrics["teacher_agreement"] is not None


def test_kd_trains_the_markup_rows_too_and_dpo_refuses_them(env):
    store, _ = env
    trained = _kd_on_two_tasks(env, "k5", KDConfig(**FAST, max_steps=1, train_added_tokens=True))
    assert trained.metrics["steps"] == 1
    _reload_and_generate(get_model_version(store, "k5").path)
    with pytest.raises(InvalidInputError, match="--train-added-tokens is not supported by dpo"):
        DPOConfig(train_added_tokens=True).validate()
    with pytest.raises(InvalidInputError, match="--spell-markup is not supported by dpo"):
        DPOConfig(spell_markup=True).validate()
    DPOConfig().validate()


def test_kd_on_policy_trains_on_the_students_own_completions(env):
    config = KDConfig(**{**FAST, "batch_size": 1}, max_steps=2, on_policy=1.0, max_new_tokens=4)
    trained = _kd_on_two_tasks(env, "k2", config)
    assert trained.metrics["on_policy_steps"] == 2 and trained.metrics["loss_first"] is not None


def test_kd_refuses_a_teacher_with_another_tokenizer(env, tmp_path):
    from supertiny.testing import build_tiny_model

    store, settings = env
    harvest_snapshot(store, "weather")
    register_external(store, build_tiny_model(tmp_path / "other-vocab", vocab_size=512), name="stranger")
    with pytest.raises(InvalidInputError, match=r"tokenizers differ \(the vocabularies differ in size"):
        train_model(store, settings, "kd", student="student", teacher="stranger", data="weather",
                    config=KDConfig(**FAST, max_steps=1))


def test_dpo_on_passing_and_failing_answers_to_the_same_tasks(env):
    store, settings = env
    snapshot = harvest_snapshot(store, "prefs", respond=alternating(), samples_per_task=2, verdict=None, limit=4)
    config = DPOConfig(**FAST, max_steps=6, learning_rate=5e-3, beta=0.5)
    trained = train_model(store, settings, "dpo", student="student", data="prefs", config=config, name="d1")
    assert trained.metrics["data_pairs"] == 4
    assert trained.metrics["loss_last"] < trained.metrics["loss_first"]
    row = get_model_version(store, "d1")
    assert (row.stage, row.dataset_id) == ("dpo", snapshot.id)
    _reload_and_generate(row.path)


def test_dpo_pairs_share_the_prompt_and_differ_in_the_answer(env):
    from supertiny.data.snapshot import get_snapshot, snapshot_items
    from supertiny.train.dpo_trainer import preference_pairs
    from transformers import AutoTokenizer

    store, _ = env
    harvest_snapshot(store, "prefs", respond=alternating(), samples_per_task=2, verdict=None, limit=2)
    tokenizer = AutoTokenizer.from_pretrained(get_model_version(store, "student").path)
    pairs, stats = preference_pairs(tokenizer, snapshot_items(store, get_snapshot(store, "prefs")), 4)
    assert stats.pairs == stats.tasks_with_pairs == 2
    pair = pairs[0]
    assert pair["prompt"].endswith("<|im_start|>assistant\n") and "Weather in" in pair["prompt"]
    assert pair["chosen"].startswith("<tool_call>") and pair["chosen"].endswith("<|im_end|>")
    assert "Atlantis" in pair["rejected"] and "Atlantis" not in pair["chosen"]


def test_dpo_without_pairs_is_refused(env):
    store, settings = env
    harvest_snapshot(store, "weather")
    with pytest.raises(InvalidInputError, match="no task with both a passing and a failing answer"):
        train_model(store, settings, "dpo", student="student", data="weather", config=DPOConfig(**FAST))


def test_rft_samples_from_the_student_then_from_each_new_model(env):
    store, settings = env
    snapshot = harvest_snapshot(store, "weather", limit=4)
    samplers = []

    def open_chat_model(name):
        samplers.append(name)
        return ScriptedChatModel(respond=alternating())

    config = RFTConfig(**FAST, rounds=2, samples_per_task=2, task_limit=4, learning_rate=5e-3)
    trained = train_model(store, settings, "rft", student="student", data="weather", config=config, name="rf",
                          open_chat_model=open_chat_model)
    round_one_model = run_dir(settings, "rf") / "round-1" / "checkpoints" / "model"
    assert samplers == ["student", str(round_one_model)]
    rounds = trained.metrics["rounds"]
    assert [entry["round"] for entry in rounds] == [1, 2]
    assert all(entry["samples"] == 8 and entry["passed"] == 4 and entry["trained_records"] == 4 for entry in rounds)
    assert rounds[0]["snapshot"] == "rf-round1@1"
    row = get_model_version(store, "rf")
    assert (row.stage, row.dataset_id, row.parent_id) == ("rft", snapshot.id, get_model_version(store, "student").id)
    _reload_and_generate(row.path)
    assert not round_one_model.exists()  # scratch: removed once the final model is registered


def test_rft_resumes_after_its_finished_rounds_without_sampling_again(env):
    store, settings = env
    harvest_snapshot(store, "weather", limit=4)
    samplers = []

    def open_chat_model(name):
        samplers.append(name)
        return ScriptedChatModel(respond=alternating())

    config = RFTConfig(**{**FAST, "save_steps": 1}, rounds=2, samples_per_task=2, task_limit=4, max_steps=2)
    run = {"student": "student", "data": "weather", "config": config, "name": "rr", "open_chat_model": open_chat_model}
    with pytest.raises(KeyboardInterrupt):
        train_model(store, settings, "rft", progress=_StopAt(2, phase="round 2: training"), **run)
    assert len(samplers) == 2
    trained = train_model(store, settings, "rft", **run)
    assert len(samplers) == 2  # both rounds' samples were kept: nothing is sampled again
    assert trained.metrics["resumed_from_step"] == 1 and [r["round"] for r in trained.metrics["rounds"]] == [1, 2]


def test_rft_with_nothing_passing_is_a_clear_error(env):
    store, settings = env
    harvest_snapshot(store, "weather", limit=2)
    with pytest.raises(InvalidInputError, match="round 1: none of the 4 samples from teacher passed"):
        train_model(store, settings, "rft", student="student", teacher="teacher", data="weather",
                    config=RFTConfig(**FAST, samples_per_task=2, task_limit=2),
                    open_chat_model=lambda name: ScriptedChatModel(respond=wrong_answer))


def test_rft_refuses_a_snapshot_without_a_domain(env):
    store, settings = env
    with store.session() as session:
        dataset = Dataset(name="traffic", version=1, domain=None, source={}, n_items=1)
        session.add(dataset)
    with pytest.raises(InvalidInputError, match="samples a domain's tasks"):
        train_model(store, settings, "rft", student="student", data="traffic", config=RFTConfig(**FAST))


def test_train_runs_leave_the_snapshots_they_sampled(env):
    store, settings = env
    harvest_snapshot(store, "weather", limit=2)
    train_model(store, settings, "rft", student="student", data="weather",
                config=RFTConfig(**FAST, samples_per_task=1, temperature=0.0, task_limit=2, max_steps=1),
                name="one", open_chat_model=lambda name: ScriptedChatModel(respond=weather_oracle))
    with store.session() as session:
        names = set(session.scalars(sa.select(Dataset.name)))
    assert names == {"weather", "one-round1"}


def test_grpo_scores_each_answer_with_the_domains_verifier(env):
    from supertiny.registry import lookup
    from supertiny.train.grpo_trainer import RewardTask, VerifierReward

    domain = lookup("domain", "toy-weather")
    task = next(domain.tasks("train"))
    reward = VerifierReward(domain, {7: RewardTask(task, task.tools)}, invalid_reward=-0.5)
    right = f'<tool_call>\n{{"name": "get_weather", "arguments": {json.dumps(task.ground_truth)}}}\n</tool_call>'
    wrong = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Atlantis"}}\n</tool_call>'
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'
    assert reward(["p"] * 4, [right, wrong, "It is sunny.", broken], [7] * 4) == [1.0, 0.0, 0.0, -0.5]
    # conversational completions are judged on their text
    assert reward(["p"], [[{"role": "assistant", "content": right}]], [7]) == [1.0]


def test_grpo_runs_the_calls_in_an_executable_domains_environment(env):
    from supertiny.domain import Verdict
    from supertiny.registry import lookup
    from supertiny.train.grpo_trainer import RewardTask, VerifierReward

    domain = lookup("domain", "toy-alerts")
    task = next(domain.tasks("train"))
    seen = []
    domain_verify = domain.verify
    try:
        domain.verify = lambda task, calls, trajectory, environment=None: (
            seen.append(environment.alerts) or Verdict.passed())
        answer = '<tool_call>\n{"name": "set_alert", "arguments": {"city": "Oslo", "above": 3}}\n</tool_call>'
        assert VerifierReward(domain, {1: RewardTask(task, task.tools)})(["p"], [answer], [1]) == [1.0]
    finally:
        domain.verify = domain_verify
    assert seen == [[("Oslo", 3.0)]]


def test_grpo_trains_on_the_snapshots_tasks_and_records_its_reward_curve(env):
    from supertiny.train.grpo_config import GRPOConfig

    store, settings = env
    snapshot = harvest_snapshot(store, "mixed", respond=alternating(), samples_per_task=2, verdict=None, limit=4)
    config = GRPOConfig(**{**FAST, "batch_size": 1}, group_size=2, max_new_tokens=8, max_steps=2,
                        learning_rate=1e-3)
    trained = train_model(store, settings, "grpo", student="student", data="mixed", config=config, name="g1")
    metrics = trained.metrics
    assert metrics["steps"] == 2 and metrics["data_tasks"] == 4
    assert [point[0] for point in metrics["reward_curve"]] == [1, 2]
    assert all(0.0 <= reward <= 1.0 for _, reward in metrics["reward_curve"])
    row = get_model_version(store, "g1")
    assert (row.stage, row.algorithm, row.dataset_id) == ("grpo", "grpo", snapshot.id)
    _reload_and_generate(row.path)


def test_grpo_bad_options_are_refused():
    from supertiny.train.grpo_config import GRPOConfig

    with pytest.raises(InvalidInputError, match="--group-size must be at least 2"):
        GRPOConfig(group_size=1).validate()
    with pytest.raises(InvalidInputError, match="--temperature must be above 0"):
        GRPOConfig(temperature=0).validate()
    with pytest.raises(InvalidInputError, match="--invalid-reward must be at most 0"):
        GRPOConfig(invalid_reward=0.5).validate()
