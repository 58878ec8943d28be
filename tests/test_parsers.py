"""The lenient parsers of programs/parsers.py on well-formed and broken completions."""

from __future__ import annotations

import pytest
from codeclm.programs.lang.parsers import (
    ParseError,
    parse_answer,
    parse_instruction,
    parse_list,
    parse_metadata,
    parse_rubrics,
    parse_scores,
)

# -- parse_metadata ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "use_case", "skills"), [
    ("Use case: x\nSkills: a, b", "x", ["a", "b"]),
    ("Task: x\nSkills: a, b", "x", ["a", "b"]),
    ("**Use case:** x\n**Skills:** a, b", "x", ["a", "b"]),
    ("**Use case**: x\n**Skills**: a, b", "x", ["a", "b"]),
    ("USE CASE: code generation\nSKILLS: python; debugging", "code generation", ["python", "debugging"]),
    ("Use case: x\nSkill: a", "x", ["a"]),
    ("Skills: a, b\nUse case: x", "x", ["a", "b"]),  # order does not matter
    ("Sure! Here is my analysis.\nUse case: creative writing.\nSkills: role-play, sports.\nHope it helps.",
     "creative writing", ["role-play", "sports"]),  # chatter around the labels, trailing dots stripped
    ("Use case: data analysis\nSkills: python, pandas and sql", "data analysis", ["python", "pandas", "sql"]),
    ("Use case: data analysis\nSkills: python, and sql", "data analysis", ["python", "sql"]),
    ("Use case: essay\nSkills: compare and contrast", "essay", ["compare and contrast"]),  # one 3-word skill
    ("Use case: x\nSkills: understanding, branding", "x", ["understanding", "branding"]),  # 'and' inside words
    ("Use case: x\nSkills: a, b\nTask: y\nSkills: c", "x", ["a", "b"]),  # the first of each label wins
], ids=["plain", "task-label", "bold-labels", "bold-before-colon", "upper-semicolons", "singular-skill",
        "reversed", "chatter", "and-joined", "oxford-and", "and-in-skill", "and-in-word", "first-wins"])
def test_parse_metadata_good(text, use_case, skills):
    assert parse_metadata(text) == {"use_case": use_case, "skills": skills}


def test_parse_metadata_caps_skills_at_three():
    assert parse_metadata("Use case: x\nSkills: a, b, c, d, e")["skills"] == ["a", "b", "c"]


def test_parse_metadata_max_skills_argument():
    assert parse_metadata("Use case: x\nSkills: a, b, c, d", max_skills=2)["skills"] == ["a", "b"]


@pytest.mark.parametrize(("text", "reason"), [
    ("Use case: x", "Skills"),
    ("Use case: x\nSkills:", "Skills"),
    ("Use case:\nSkills: a", "Use case"),
    ("Skills: a, b", "Use case"),
    ("Sure, here you go! I think this instruction is about writing.", "Use case"),
    ("", "Use case"),
], ids=["no-skills-line", "empty-skills", "empty-use-case", "no-use-case", "chatter", "empty"])
def test_parse_metadata_bad(text, reason):
    with pytest.raises(ParseError, match=reason):
        parse_metadata(text)


@pytest.mark.parametrize("text", ["- Use case: x\n- Skills: a, b", "* **Use case:** x\n* **Skills:** a, b",
                                  "1. Use case: x\n2. Skills: a, b"], ids=["dash", "star-bold", "numbered"])
def test_parse_metadata_labels_as_list_items(text):
    assert parse_metadata(text) == {"use_case": "x", "skills": ["a", "b"]}


# -- parse_list ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "items"), [
    ("1. a\n2. b", ["a", "b"]),
    ("1) a\n2) b", ["a", "b"]),
    ("(1) a\n(2) b", ["a", "b"]),
    ("- a\n- b", ["a", "b"]),
    ("* a\n* b", ["a", "b"]),
    ("• a\n• b", ["a", "b"]),
    ("Here are the items:\n1. a\n2. b", ["a", "b"]),  # a lead-in line before the first item is skipped
    ("1. first part\n   continued here\n2. b", ["first part continued here", "b"]),
    ("1. a\nmore of a\n2. b\nmore of b", ["a more of a", "b more of b"]),
    ("1. a **bold** word\n2. a `code` item", ["a **bold** word", "a `code` item"]),
    ("  1.   padded   \n  2. b  ", ["padded", "b"]),
], ids=["dot", "paren", "both-parens", "dash", "star", "bullet", "lead-in", "continuation",
        "continuations", "markup-kept-inside", "padding"])
def test_parse_list_good(text, items):
    assert parse_list(text) == items


@pytest.mark.parametrize("text", ["", "   \n  ", "no items here", "First a, then b.\nAnd c."],
                         ids=["empty", "blank", "one-line", "prose"])
def test_parse_list_bad(text):
    with pytest.raises(ParseError, match="no numbered or bulleted items"):
        parse_list(text)


@pytest.mark.parametrize(("text", "allowed"), [
    ("1. **Clarity**: the answer is clear\n2. b", ("**Clarity**: the answer is clear", "Clarity: the answer is clear")),
    ("1. use `print`\n2. b", ("use `print`", "use print")),
], ids=["bold-opens", "code-closes"])
def test_parse_list_keeps_markup_balanced(text, allowed):
    assert parse_list(text)[0] in allowed


def test_parse_list_ignores_closing_chatter():
    assert parse_list("1. a\n2. b\n\nLet me know if you need more.") == ["a", "b"]


# -- parse_rubrics -------------------------------------------------------------------------

RUBRICS = "Rubrics:\n1. r1\n2. r2\nActions:\n1. a1\n2. a2"


@pytest.mark.parametrize(("text", "count", "expected"), [
    (RUBRICS, 4, {"rubrics": ["r1", "r2"], "actions": ["a1", "a2"]}),
    (RUBRICS, 1, {"rubrics": ["r1"], "actions": ["a1"]}),
    ("Rubrics:\n1. r1\n2. r2\n3. r3\nActions:\n1. a1\n2. a2\n3. a3", 2,
     {"rubrics": ["r1", "r2"], "actions": ["a1", "a2"]}),
    ("**Rubrics:**\n1. r1\n**Actions:**\n1. a1", 4, {"rubrics": ["r1"], "actions": ["a1"]}),
    ("## Rubrics\n- r1\n- r2\n## Actions\n- a1", 4, {"rubrics": ["r1", "r2"], "actions": ["a1"]}),
    ("1. r1\nActions:\n1. a1", 4, {"rubrics": ["r1"], "actions": ["a1"]}),  # no Rubrics header
    ("rubrics:\n1. r1\nACTION:\n1. a1", 4, {"rubrics": ["r1"], "actions": ["a1"]}),
], ids=["plain", "cap-1", "cap-2-of-3", "bold-headers", "markdown-headers", "no-rubrics-header", "case"])
def test_parse_rubrics_good(text, count, expected):
    assert parse_rubrics(text, count) == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("Rubrics:\n1. r1\n2. r2", "no 'Actions:' section"),
    ("Rubrics:\nActions:\n1. a1", "no rubrics"),
    ("Rubrics:\n1. r1\nActions:\n", "no actions"),
    ("I cannot help with that.", "no 'Actions:' section"),
], ids=["missing-actions", "no-rubrics", "no-actions", "chatter"])
def test_parse_rubrics_bad(text, reason):
    with pytest.raises(ParseError, match=reason):
        parse_rubrics(text, 4)



# The layout that used to be read as one rubric and three "actions" still holding rubric text.
INTERLEAVED = """1. Rubric: Depth of the market analysis
Action: Add a SWOT analysis
2. Rubric: Awareness of the competition
Action: Include a comparison with competitors
3. Rubric: Use of evidence and data
Action: Ask for figures that back each claim
4. Rubric: Attention to risks
Action: Require a plan for the two largest risks"""
PAIRS = {"rubrics": ["Depth of the market analysis", "Awareness of the competition", "Use of evidence and data",
                     "Attention to risks"],
         "actions": ["Add a SWOT analysis", "Include a comparison with competitors",
                     "Ask for figures that back each claim", "Require a plan for the two largest risks"]}
TWO = {"rubrics": ["Depth", "Awareness"], "actions": ["Add a SWOT analysis", "Compare with competitors"]}


@pytest.mark.parametrize(("text", "expected"), [
    (INTERLEAVED, PAIRS),
    (INTERLEAVED.replace("\nAction", "\n   Action"), PAIRS),
    ("Rubric 1: Depth\nAction 1: Add a SWOT analysis\n\nRubric 2: Awareness\nAction 2: Compare with competitors", TWO),
    ("Rubric: Depth\nAction: Add a SWOT analysis\nRubric: Awareness\nAction: Compare with competitors", TWO),
    ("**Rubric 1:** Depth\n**Action 1:** Add a SWOT analysis\n**Rubric 2:** Awareness\n"
     "**Action 2:** Compare with competitors", TWO),
    ("1. **Rubric**: Depth\n   - **Action**: Add a SWOT analysis\n2. **Rubric**: Awareness\n"
     "   - **Action**: Compare with competitors", TWO),
    ("Rubric 1:\nDepth\nAction 1:\nAdd a SWOT analysis\nRubric 2:\nAwareness\nAction 2:\nCompare with competitors",
     TWO),
    ("1. Depth\n   Action: Add a SWOT analysis\n2. Awareness\n   Action: Compare with competitors", TWO),
    ("1. Rubric: Depth. Action: Add a SWOT analysis\n2. Rubric: Awareness | Action: Compare with competitors",
     {"rubrics": ["Depth.", "Awareness"], "actions": TWO["actions"]}),
    ("Here are the rubrics and actions:\n\n" + INTERLEAVED + "\n\nLet me know if you need more.", PAIRS),
], ids=["the-reported-layout", "indented-actions", "numbered-labels", "unnumbered", "bold-labels", "bold-bullets",
        "label-alone", "unlabelled-rubrics", "one-line-pairs", "chatter-around"])
def test_parse_rubrics_interleaved_pairs(text, expected):
    assert parse_rubrics(text, 4) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("Rubric 1: Depth\nRubric 2: Awareness\nAction 1: Add a SWOT analysis\nAction 2: Compare with competitors", TWO),
    ("Rubrics:\n1. Rubric: Depth\n2. Rubric: Awareness\nActions:\n1. Add a SWOT analysis\n"
     "2. Compare with competitors", TWO),
    ("Rubrics:\n1. Depth\n2. Awareness\n\nActions:\n1. Add a SWOT analysis\n2. Compare with competitors", TWO),
    ("Rubrics: 1. Depth\n2. Awareness\nActions: 1. Add a SWOT analysis\n2. Compare with competitors", TWO),
    ("Rubrics:\n1. Clear call to action: present\n2. Actionable: yes\nActions:\n1. a1\n2. a2",
     {"rubrics": ["Clear call to action: present", "Actionable: yes"], "actions": ["a1", "a2"]}),
], ids=["labelled-sections", "labelled-items", "blank-line", "inline-headers", "action-words-in-rubrics"])
def test_parse_rubrics_sections_with_labels(text, expected):
    assert parse_rubrics(text, 4) == expected


@pytest.mark.parametrize("text", [
    "Action: Add a SWOT analysis\nRubric: Depth",  # an action before any rubric
    ("1. Rubric: Depth\nAction: Add a SWOT analysis\n2. Rubric: Awareness\n3. Rubric: Evidence\n"
     "Action: Ask for figures"),
    "Rubrics:\n1. Depth\n2. Awareness\nActions:\n1. Add a SWOT analysis\nRubric: Evidence\nAction: Ask for figures",
    "Rubric: Depth\nAction: a\nAction: b\nRubric: Awareness\nAction: c",
], ids=["action-first", "pair-missing-its-action", "pairs-then-sections", "two-actions-in-a-pair"])
def test_parse_rubrics_refuses_what_is_neither_layout(text):
    with pytest.raises(ParseError, match="mixed"):
        parse_rubrics(text, 4)

# -- parse_instruction and parse_answer ----------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("Improved instruction: Do X.", "Do X."),
    ("improved INSTRUCTION:   Do X.", "Do X."),
    ("**Improved instruction:** Do X.", "Do X."),
    ("New instruction: Do X.", "Do X."),
    ("Rewritten instruction: Do X.", "Do X."),
    ("Do X.", "Do X."),
    ('  "Do X."  ', "Do X."),
    ("Improved instruction:\nDo X.\nThen Y.", "Do X.\nThen Y."),
], ids=["label", "label-case", "bold-label", "new", "rewritten", "no-label", "quoted", "multiline"])
def test_parse_instruction_good(text, expected):
    assert parse_instruction(text) == expected


@pytest.mark.parametrize("text", ["", "   \n ", "Improved instruction:", "**Improved instruction:**  "],
                         ids=["empty", "blank", "label-only", "bold-label-only"])
def test_parse_instruction_empty(text):
    with pytest.raises(ParseError, match="empty instruction"):
        parse_instruction(text)


def test_parse_answer():
    assert parse_answer("  An answer.\n") == "An answer."
    with pytest.raises(ParseError, match="empty answer"):
        parse_answer(" \n ")


# -- parse_scores --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "scores"), [
    ("7 3", (7.0, 3.0)),
    ("7, 3", (7.0, 3.0)),
    ("7/10 3/10", (7.0, 3.0)),
    ("7/10 and 3/10", (7.0, 3.0)),
    ("Assistant 1: 7\nAssistant 2: 3", (7.0, 3.0)),
    ("Assistant 2: 3\nAssistant 1: 7", (7.0, 3.0)),
    ("**Assistant 1:** 7/10\n**Assistant 2:** 3/10", (7.0, 3.0)),
    ("System 1: 7\nSystem 2: 3", (7.0, 3.0)),
    ("8.5 6", (8.5, 6.0)),
    ("7.5/10, 6/10", (7.5, 6.0)),
    ("7\n3", (7.0, 3.0)),
    ("7 3\nAssistant 1 is more detailed and covers 4 points; the other misses 2 of them.", (7.0, 3.0)),
    ("7 3\n\nExplanation: both answers are short, 1 line each.", (7.0, 3.0)),
    ("7\n3\nThe first covers 5 points.", (7.0, 3.0)),
    ("10 1", (10.0, 1.0)),
    ("1 10", (1.0, 10.0)),
], ids=["space", "comma", "slash", "slash-and", "labelled", "labelled-reversed", "labelled-bold", "system",
        "decimal", "decimal-slash", "one-per-line", "explanation", "explanation-blank-line",
        "one-per-line-explained", "edge-high", "edge-low"])
def test_parse_scores_good(text, scores):
    assert parse_scores(text) == scores


@pytest.mark.parametrize(("text", "scale", "reason"), [
    ("11 3", (1, 10), "outside the scale"),
    ("7 0", (1, 10), "outside the scale"),
    ("Assistant 1: 12\nAssistant 2: 3", (1, 10), "outside the scale"),
    ("7 3", (1, 5), "outside the scale"),
    ("no numbers here", (1, 10), "two scores"),
    ("7", (1, 10), "two scores"),
    ("7\nThe first answer is better.", (1, 10), "two scores"),
    ("", (1, 10), "two scores"),
], ids=["above", "below", "labelled-above", "other-scale", "no-numbers", "single", "single-explained", "empty"])
def test_parse_scores_bad(text, scale, reason):
    with pytest.raises(ParseError, match=reason):
        parse_scores(text, scale)


def test_parse_scores_other_scale():
    assert parse_scores("4 2", (1, 5)) == (4.0, 2.0)


def test_parse_scores_labelled_with_verb():
    assert parse_scores("Assistant 1 scores 7, Assistant 2 scores 3") == (7.0, 3.0)


def test_parse_scores_explanation_with_labelled_numbers_ignored():
    assert parse_scores("9 5\nBoth are fine. Assistant 1: 2 examples, Assistant 2: 1 example.") == (9.0, 5.0)


def test_parse_scores_negative_is_out_of_scale():
    with pytest.raises(ParseError):
        parse_scores("-1 3")


@pytest.mark.parametrize(("content", "says"), [
    ('{"answer": ' + "[" * 50_000 + "]" * 50_000 + "}", "nested too deeply"),
    ('{"answer": ' + "9" * 10_000 + "}", "unreadable JSON"),
    ('{"answer": "a\\ud800"}', "lone surrogate"),
    ('{"answer": NaN}', "NaN"),
    ('{"answer": -Infinity}', "Infinity"),
])
def test_a_json_answer_no_file_can_hold_is_a_parse_error(content, says):
    """Each crashed the run (a traceback, and the cached answer crashed every rerun), or wrote NaN into
    dataset.jsonl, which is then not JSON: a malformed answer is a recorded failure."""
    from codeclm.programs.lang.parsing import PARSERS

    with pytest.raises(ParseError, match=says):
        PARSERS["json"].read(content, ["answer"])


def test_a_score_of_more_digits_than_a_float_holds_is_a_parse_error():
    from codeclm.programs.lang.parsing import PARSERS

    with pytest.raises(ParseError, match="digits"):
        PARSERS["score"].read("Score: " + "9" * 5000, ["score"])
    assert PARSERS["score"].read("Score: 7", ["score"]) == 7.0


@pytest.mark.parametrize(("sent", "kept"), [(float("nan"), 0), (-5, 0), ("12", 0), (True, 0), (12.0, 12), (7, 7)])
def test_a_servers_token_count_that_is_not_a_count_is_zero(sent, kept):
    """NaN usage reached the manifest (not JSON) and the cache, whose entry then read as damaged."""
    from codeclm.programs.models.backends import Completion

    completion = Completion("text", "stop", sent, sent)
    assert (completion.prompt_tokens, completion.completion_tokens) == (kept, kept)


def test_a_json_number_past_a_float_is_a_parse_error():
    from codeclm.programs.lang.parsing import PARSERS

    with pytest.raises(ParseError, match="past what a float holds"):
        PARSERS["json"].read('{"answer": 1e400}', ["answer"])
    with pytest.raises(ParseError, match="^the JSON holds NaN"):  # said once, not inside "unreadable JSON: ..."
        PARSERS["json"].read('{"answer": NaN}', ["answer"])
