"""BFCL's AST-match semantics on hand-written cases (BFCL-dialect schemas, converted as tasks are)."""

import pytest
from supertiny.schema import ParsedCall
from supertiny_bfcl.checker import check_answer, standardize_string
from supertiny_bfcl.schema import openai_tools

WEATHER = {
    "name": "weather.get_current",
    "description": "Current weather in a city.",
    "parameters": {"type": "dict", "properties": {
        "city": {"type": "string", "description": "City name."},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Default celsius."},
        "days": {"type": "integer", "description": "Days ahead."},
        "threshold": {"type": "float", "description": "Alert threshold."},
    }, "required": ["city"]},
}
GROUP = {
    "name": "restaurant.find_group",
    "description": "Find a restaurant for a group.",
    "parameters": {"type": "dict", "properties": {
        "location": {"type": "string"},
        "cuisine": {"type": "array", "items": {"type": "string"}},
        "group_size": {"type": "integer"},
        "budget": {"type": "dict", "properties": {"min": {"type": "float"}, "max": {"type": "float"}}},
        "tip": {"type": "float", "description": "Default None."},
    }, "required": ["location", "group_size"]},
}
WEATHER_TRUTH = {"weather.get_current": {"city": ["Paris", "Paris, France"],
                                         "unit": ["celsius", "fahrenheit", ""],
                                         "days": [3], "threshold": ["", 2.0]}}


def call(name: str, **arguments) -> ParsedCall:
    return ParsedCall(name=name, arguments=arguments)


def judge(category: str, calls: list[ParsedCall], truth: list[dict], functions: list[dict] | None = None):
    return check_answer(category, calls, truth, openai_tools(functions or [WEATHER, GROUP]))


def weather(**arguments) -> ParsedCall:
    return call("weather_get_current", **{"city": "Paris", "days": 3, **arguments})


def test_right_answer_passes():
    assert judge("simple_python", [weather(unit="celsius")], [WEATHER_TRUTH]).verdict == "pass"


def test_wrong_value_fails_with_the_acceptable_values():
    verdict = judge("simple_python", [weather(unit="kelvin")], [WEATHER_TRUTH])
    assert verdict.verdict == "fail"
    assert verdict.reason == "weather.get_current: unit 'kelvin' not in ['celsius', 'fahrenheit', '']"


def test_missing_required_parameter_fails():
    verdict = judge("simple_python", [call("weather_get_current", days=3)], [WEATHER_TRUTH])
    assert verdict.reason == "weather.get_current: missing required parameter 'city'"


def test_optional_parameter_may_be_omitted_but_expected_ones_may_not():
    assert judge("simple_python", [weather()], [WEATHER_TRUTH]).verdict == "pass"
    verdict = judge("simple_python", [call("weather_get_current", city="Paris")], [WEATHER_TRUTH])
    assert verdict.verdict == "fail" and "missing parameter 'days'" in verdict.reason


def test_empty_value_for_an_optional_parameter_counts_as_left_out():
    truth = [{"restaurant.find_group": {"location": ["Boston"], "group_size": [4],
                                        "cuisine": [["Thai"], ""]}}]
    for cuisine in ([], ["Thai"]):
        answer = call("restaurant_find_group", location="Boston", group_size=4, cuisine=cuisine)
        assert judge("simple_python", [answer], truth).verdict == "pass"
    assert judge("simple_python", [weather(unit="")], [WEATHER_TRUTH]).verdict == "pass"
    assert judge("simple_python", [weather(city="")], [WEATHER_TRUTH]).verdict == "fail"


def test_unexpected_parameter_fails():
    verdict = judge("simple_python", [weather(humidity=True)], [WEATHER_TRUTH])
    assert verdict.reason == "weather.get_current: unexpected parameter 'humidity'"


def test_int_widens_to_float_but_float_is_no_integer():
    assert judge("simple_python", [weather(threshold=2)], [WEATHER_TRUTH]).verdict == "pass"
    verdict = judge("simple_python", [weather(days=3.0)], [WEATHER_TRUTH])
    assert verdict.reason == "weather.get_current: days 3.0 is float, expected integer"


def test_bool_is_neither_integer_nor_string():
    assert judge("simple_python", [weather(days=True)], [WEATHER_TRUTH]).verdict == "fail"
    assert judge("simple_python", [weather(city=True)], [WEATHER_TRUTH]).verdict == "fail"


@pytest.mark.parametrize("city", ["paris", "PARIS", "Paris,France", "paris - france", "Paris. France"])
def test_strings_compare_after_bfcl_standardisation(city):
    assert judge("simple_python", [weather(city=city)], [WEATHER_TRUTH]).verdict == "pass"


def test_standardize_string_matches_bfcl():
    assert standardize_string("April 1, 2024") == standardize_string("april 1 2024") == "april12024"
    assert standardize_string("x_y-z/w*v^u.") == "xyzwvu"
    assert standardize_string("it's") == 'it"s'


def test_extra_call_fails():
    verdict = judge("simple_python", [weather(), weather()], [WEATHER_TRUTH])
    assert verdict.reason == "simple_python: 2 calls made, 1 expected"


def test_lists_compare_in_order_with_standardised_strings():
    truth = [{"restaurant.find_group": {"location": ["Boston"], "group_size": [4],
                                        "cuisine": [["Italian", "Thai"]]}}]
    good = call("restaurant_find_group", location="boston", group_size=4, cuisine=["italian", "THAI"])
    assert judge("simple_python", [good], truth).verdict == "pass"
    reordered = call("restaurant_find_group", location="Boston", group_size=4, cuisine=["Thai", "Italian"])
    assert judge("simple_python", [reordered], truth).verdict == "fail"


def test_dicts_compare_recursively_with_acceptable_values_inside():
    truth = [{"restaurant.find_group": {"location": ["Boston"], "group_size": [4],
                                        "budget": [{"min": [10.0, ""], "max": [50.0]}]}}]
    for budget in ({"min": 10, "max": 50}, {"max": 50.0}):
        answer = call("restaurant_find_group", location="Boston", group_size=4, budget=budget)
        assert judge("simple_python", [answer], truth).verdict == "pass"
    for budget in ({"min": 10, "max": 60}, {"min": 10}, {"max": 50, "currency": "USD"}):
        answer = call("restaurant_find_group", location="Boston", group_size=4, budget=budget)
        assert judge("simple_python", [answer], truth).verdict == "fail", budget


def test_ground_truth_of_another_type_than_the_schema_is_accepted_as_is():
    # BFCL's "variable" rule: null for an optional float, a variable name for a list
    truth = [{"restaurant.find_group": {"location": ["Boston"], "group_size": [4], "tip": ["", None],
                                        "cuisine": ["cuisines"]}}]
    answer = call("restaurant_find_group", location="Boston", group_size=4, tip=None, cuisine="cuisines")
    assert judge("simple_python", [answer], truth).verdict == "pass"
    answer = call("restaurant_find_group", location="Boston", group_size=4, cuisine="CUISINES")
    assert judge("simple_python", [answer], truth).verdict == "fail"


PARALLEL_TRUTH = [
    {"weather.get_current": {"city": ["Paris"], "days": [1]}},
    {"weather.get_current": {"city": ["Tokyo"], "days": [1]}},
    {"restaurant.find_group": {"location": ["Boston"], "group_size": [4]}},
]
PARALLEL_CALLS = [call("weather_get_current", city="Paris", days=1),
                  call("weather_get_current", city="Tokyo", days=1),
                  call("restaurant_find_group", location="Boston", group_size=4)]


def test_parallel_calls_match_in_any_order():
    assert judge("parallel_multiple", PARALLEL_CALLS, PARALLEL_TRUTH).verdict == "pass"
    assert judge("parallel_multiple", PARALLEL_CALLS[::-1], PARALLEL_TRUTH).verdict == "pass"


def test_parallel_count_mismatch_fails():
    verdict = judge("parallel", PARALLEL_CALLS[:1], PARALLEL_TRUTH)
    assert verdict.reason == "parallel: 1 call made, 3 expected"
    verdict = judge("parallel", [*PARALLEL_CALLS, PARALLEL_CALLS[0]], PARALLEL_TRUTH)
    assert verdict.reason == "parallel: 4 calls made, 3 expected"


def test_parallel_each_expected_call_is_used_once():
    calls = [PARALLEL_CALLS[0], PARALLEL_CALLS[0], PARALLEL_CALLS[2]]
    verdict = judge("parallel", calls, PARALLEL_TRUTH)
    assert verdict.verdict == "fail"
    assert verdict.reason == ("parallel: expected call #2 of 3 unmatched: "
                              "weather.get_current: city 'Paris' not in ['Tokyo']")


def test_parallel_finds_an_assignment_a_greedy_pass_would_miss():
    # the first expected call accepts either city; a greedy pass gives it Tokyo and strands the second
    truth = [{"weather.get_current": {"city": ["Tokyo", "Paris"], "days": [1]}},
             {"weather.get_current": {"city": ["Tokyo"], "days": [1]}}]
    assert judge("parallel", PARALLEL_CALLS[1::-1], truth).verdict == "pass"


def test_multiple_with_the_wrong_function_fails():
    truth = [{"restaurant.find_group": {"location": ["Boston"], "group_size": [4]}}]
    verdict = judge("multiple", [weather()], truth)
    assert verdict.reason == "called 'weather_get_current', expected 'restaurant.find_group'"
    assert judge("multiple", [PARALLEL_CALLS[2]], truth).verdict == "pass"


def test_irrelevance_passes_only_without_a_call():
    assert judge("irrelevance", [], []).verdict == "pass"
    verdict = judge("irrelevance", [weather()], [])
    assert verdict.reason == "irrelevance: 1 call made (weather_get_current), expected none"


@pytest.mark.parametrize(("name", "verdict"), [
    ("restaurant.find_group", "pass"),
    ("restaurant_find_group", "pass"),
    ("find_group", "fail"),
    ("restaurant", "fail"),
    ("Restaurant_Find_Group", "fail"),
])
def test_dotted_names_must_be_exact_in_either_spelling(name, verdict):
    truth = [{"restaurant.find_group": {"location": ["Boston"], "group_size": [4]}}]
    answer = call(name, location="Boston", group_size=4)
    assert judge("simple_python", [answer], truth).verdict == verdict
