"""One tool, one question and greedy options shared by the backend tests."""

from supertiny.models.backend import GenerationOptions

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = GenerationOptions(max_new_tokens=16)
