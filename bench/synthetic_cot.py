"""Synthetic long chain-of-thought responses, clean and degenerate (no model, no download).

Used to calibrate the repetition filter (tests/test_repetition.py) and as the corpus of
bench/bench_filter.py. A clean response imitates a reasoning model's trace: paragraphs of
computation and prose, with the formulaic re-checking long CoT is full of ("Wait,",
"Let me check", "Alternatively", recomputing a step), then ``</think>`` and a short final
answer with ``\\boxed{}``. Degenerate kinds append or insert what sampling at low
temperature produces when it goes wrong: a looping tail (often cut mid-copy), a paragraph
pasted again and again, a short phrase looping, a run of one character.
"""

from __future__ import annotations

import random

NOUNS = ("equation", "term", "sum", "product", "factor", "root", "coefficient", "function",
         "value", "expression", "triangle", "angle", "side", "area", "radius", "sequence",
         "series", "limit", "derivative", "integral", "matrix", "vector", "probability",
         "remainder", "divisor", "polynomial", "variable", "constraint", "case", "bound",
         "inequality", "denominator", "numerator", "exponent", "logarithm", "base", "digit",
         "interval", "point", "line", "circle", "slope", "graph", "set", "element", "count")
VERBS = ("compute", "simplify", "substitute", "factor", "expand", "check", "verify", "solve",
         "consider", "rewrite", "bound", "estimate", "evaluate", "compare", "differentiate",
         "integrate", "multiply", "divide", "add", "subtract", "apply", "use", "test", "try")
ADJ = ("first", "second", "last", "next", "previous", "original", "given", "remaining",
       "positive", "negative", "smallest", "largest", "same", "other", "whole", "final")
LINKS = ("so", "then", "therefore", "hence", "thus", "but", "and", "since", "because")
VARS = ("x", "y", "n", "k", "a", "b", "m", "t", "p", "q")
TEMPLATES = (
    "Let me {verb} the {adj} {noun} first.",
    "We have {var} = {a}, so {var}^2 = {sq}.",
    "{a} times {b} is {ab}, and adding {c} gives {abc}.",
    "Now {verb} this into the {noun}: {a}{var} + {b} = {c}.",
    "{Link} the {noun} of the {adj} {noun2} must be {a}.",
    "If {var} = {a}, then the {noun} becomes {ab}, which is {cmp} than {c}.",
    "I need to {verb} whether the {noun} is divisible by {b}.",
    "The {adj} {noun} and the {noun2} are related by a factor of {b}.",
    "{Link} {a} + {b} = {apb}, and {apb} - {c} = {apbmc}.",
    "So we {verb} the {noun} over the {adj} {noun2}, term by term.",
    "This {noun} has {a} {noun2}s, each contributing {b} to the {adj} {noun3}.",
    "Using the {noun} formula with {var} = {b}, the {noun2} equals {ab}.",
)
CHECKS = ("Wait, let me check that again.", "Hmm, wait.", "Wait, that doesn't seem right.",
          "Let me double-check the {noun}.", "Hmm, let me verify: {a} times {b} is {ab}. Yes.",
          "Alternatively, maybe I should {verb} the {noun} differently.", "Wait, is that correct?",
          "Let me recompute: {a} + {b} = {apb}. Okay.", "Hold on.", "Yes, that checks out.")


def _fill(template: str, rng: random.Random) -> str:
    a, b, c = rng.randint(2, 999), rng.randint(2, 99), rng.randint(1, 500)
    return template.format(
        verb=rng.choice(VERBS), adj=rng.choice(ADJ), noun=rng.choice(NOUNS),
        noun2=rng.choice(NOUNS), noun3=rng.choice(NOUNS), var=rng.choice(VARS),
        Link=rng.choice(LINKS).capitalize(), a=a, b=b, c=c, sq=a * a, ab=a * b, abc=a * b + c,
        apb=a + b, apbmc=a + b - c, cmp=rng.choice(("larger", "smaller")))


def _paragraph(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(2, 7)):
        pool = CHECKS if rng.random() < 0.18 else TEMPLATES
        sentences.append(_fill(rng.choice(pool), rng))
    return " ".join(sentences)


def clean_response(rng: random.Random, words: int = 3000) -> str:
    """A long-CoT response of about ``words`` words: think part, then a boxed answer."""
    paragraphs: list[str] = []
    count = 0
    while count < words:
        # Long CoT puts short checks on lines of their own ("Wait.", "Hmm.") fairly often.
        text = _fill(rng.choice(CHECKS), rng) if rng.random() < 0.12 else _paragraph(rng)
        paragraphs.append(text)
        count += len(text.split())
    answer = rng.randint(1, 9999)
    final = (f"The {rng.choice(NOUNS)} works out to {answer}.\n\n"
             f"**Final Answer**\n\\[\n\\boxed{{{answer}}}\n\\]")
    return "<think>\n" + "\n\n".join(paragraphs) + "\n</think>\n\n" + final


DEGENERATE_KINDS = ("looping_sentence", "looping_paragraph", "pasted_paragraphs", "phrase_loop",
                    "char_run")


def degenerate_response(rng: random.Random, kind: str, words: int = 3000) -> str:
    """A response that went wrong in the way ``kind`` names (see DEGENERATE_KINDS)."""
    body = clean_response(rng, words).split("\n</think>")[0]
    if kind == "looping_sentence":  # one sentence over and over until the token limit
        sentence = _fill(rng.choice(TEMPLATES), rng) + " "
        loop = sentence * rng.randint(8, 60)
        return body + "\n\n" + loop[:len(loop) - rng.randint(0, len(sentence) - 1)]
    if kind == "looping_paragraph":
        paragraph = _paragraph(rng) + "\n\n"
        loop = paragraph * rng.randint(5, 20)
        return body + "\n\n" + loop[:len(loop) - rng.randint(0, len(paragraph) - 1)]
    if kind == "pasted_paragraphs":  # the middle repeats a block of paragraphs, then recovers
        parts = body.split("\n\n")
        cut = rng.randint(1, max(1, len(parts) - 1))
        block = parts[max(0, cut - rng.randint(1, 3)):cut]
        parts[cut:cut] = block * rng.randint(6, 15)
        return "\n\n".join(parts) + "\n</think>\n\nThe answer is \\boxed{7}."
    if kind == "phrase_loop":  # "Wait, let me check. Wait, let me check. ..." mid-line, to the end
        phrase = rng.choice(("Wait, let me check. ", "Hmm, wait. ", "Let me verify again. ",
                             "So the answer is 12. "))
        return body + " " + phrase * rng.randint(15, 80)
    if kind == "char_run":
        return body + "\n\n" + rng.choice("!.=0-*") * rng.randint(200, 3000)
    raise ValueError(f"unknown degenerate kind {kind!r}")
