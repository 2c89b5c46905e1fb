import pytest

from rmboost.parsing import ParseError, extract_list, extract_tag, normalize_for_compare


def test_plain_tag():
    assert extract_tag("<response>Paris.</response>", "response") == "Paris."


def test_surrounding_text_is_ignored():
    text = "Sure! Here it is:\n<response>\n  The answer is 42.\n</response>\nHope this helps."
    assert extract_tag(text, "response") == "The answer is 42."


def test_missing_closing_tag_takes_the_rest():
    assert extract_tag("Thinking...\n<response>It rains in Spain", "response") == "It rains in Spain"


def test_repeated_tags_last_non_empty_wins():
    text = "Format: <response></response>. <response>first</response> then <response>second</response>"
    assert extract_tag(text, "response") == "second"


def test_repeated_tags_skip_trailing_placeholder():
    text = "<response>real answer</response> <response>...</response>"
    assert extract_tag(text, "response") == "real answer"


def test_tag_case_and_spaces():
    assert extract_tag("< Response >ok</ RESPONSE >", "response") == "ok"


def test_code_fence_is_stripped():
    assert extract_tag("<response>```\nhello\n```</response>", "response") == "hello"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("no tags here at all", "no_tag"),
        ("<response>   </response>", "empty"),
        ("<response></response><response>  </response>", "empty"),
    ],
)
def test_unusable_answers_raise_with_reason(text, reason):
    with pytest.raises(ParseError) as info:
        extract_tag(text, "response")
    assert info.value.reason == reason


def test_optional_tag_returns_none():
    assert extract_tag("no tag", "aspects", required=False) is None


def test_extract_list():
    assert extract_list("<aspects>Completeness, (Factuality and faithfulness)\n- relevance</aspects>", "aspects") == [
        "Completeness",
        "Factuality and faithfulness",
        "relevance",
    ]
    assert extract_list("nothing", "aspects") == []


def test_normalize_for_compare():
    assert normalize_for_compare("  The  Cat\nsat ") == normalize_for_compare("the cat sat")


def test_unclosed_block_ends_at_the_next_tag_block():
    assert extract_tag("<response>new text<aspects>completeness</aspects>", "response") == "new text"
    assert extract_list("<response>new text<aspects>completeness</aspects>", "aspects") == ["completeness"]


def test_closing_tag_without_its_bracket_still_closes():
    # Seen from the embedded model: "</response" at the end of the answer or before a line break.
    assert extract_tag("<response>the answer </response", "response") == "the answer"
    assert extract_tag("<response>the answer </response\n<aspects>x</aspects>", "response") == "the answer"
    assert extract_tag("<response>keeps </responses> inside</response>", "response") == "keeps </responses> inside"
