"""The tiny in-process models every later test trains and serves."""

from transformers import AutoModelForCausalLM, AutoTokenizer

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_tiny_model_renders_tools_and_generates(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Weather in Oslo?"}],
                                           tools=[WEATHER_TOOL], add_generation_prompt=True, tokenize=False)
    assert '"name": "get_weather"' in prompt and prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5 or tokenizer.eos_token_id in out[0, ids.shape[1]:]
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA, like Qwen


def test_teacher_and_student_share_a_tokenizer(tiny_model_dir, tiny_teacher_dir):
    student = AutoTokenizer.from_pretrained(tiny_model_dir)
    teacher = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    assert student.get_vocab() == teacher.get_vocab()
    assert student.convert_tokens_to_ids("<tool_call>") == teacher.convert_tokens_to_ids("<tool_call>")
