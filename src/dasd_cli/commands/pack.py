"""``dasd pack``: tokenize response records and pack them into training sequences.

Reads response records, tokenizes each as the student sees it in training and packs
the samples into packed records (DESIGN.md "Packed sequence"), never truncating: the
work is pipeline/packing.py's. The tokens wait on disk, not in memory, until every
length is known. On-policy samples (records with ``teacher_scores``, METHOD.md section 5)
also carry the sampler's and the teacher's log-prob of every response token into the
packed records.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dasd_cli.commands import common
from dasd_cli.pipeline.packing import TOKENIZE_BATCH, PackSettings, pack_records


@common.shared_options()
def pack_command(
    shared: common.Common,
    cutoff_len: Annotated[int, typer.Option(
        "--cutoff-len", metavar="L", min=1,
        help="Tokens per packed sequence. A sample longer than L is dropped (reason "
        "over_cutoff), never truncated.")] = 65536,
    tokenizer: Annotated[Optional[str], typer.Option(
        "--tokenizer", metavar="PATH",
        help="The STUDENT tokenizer and chat template: a model or tokenizer folder, or a .gguf file "
        "(default: the embedded default model).", show_default=False)] = None,
    pack: Annotated[bool, typer.Option(
        "--pack/--no-pack",
        help="Pack several samples per sequence (global best-fit decreasing), or write "
        "one sample per sequence in input order.")] = True,
    system_prompt: common.SystemPrompt = None,
    workers: Annotated[int, typer.Option(
        "--workers", metavar="N", min=0,
        help="1: parse here and tokenize on every core with the tokenizer's threads. N > 1: "
        "parse and tokenize in N processes (0: one per core), for machines where parsing "
        f"JSON on one core is the bottleneck. Input of one chunk ({TOKENIZE_BATCH} records) "
        "is always tokenized here.")] = 1,
) -> None:
    """Tokenize responses with the student's chat template and pack them into sequences.

    Writes records {input_ids, labels, position_ids, ids, tokenizer}: labels are -100
    except on each response and its end-of-turn token; position_ids restart at 0 per
    sample; tokenizer is the fingerprint of the student tokenizer and chat template
    (dasd train refuses data packed for another). On-policy samples (records with
    teacher_scores, from dasd score --role teacher) also get sampler_logprobs and
    teacher_logprobs per token (0.0 where no loss) and labels on the sampled response
    tokens only; a sample whose tokens do not line up with the student tokenizer's is
    dropped (tokens_misaligned). Reads all input before writing
    (best-fit decreasing needs every length), keeping the tokens in a temporary store in
    $TMPDIR (4 bytes per token) and only per-sample lengths and ids in memory.
    """
    settings = PackSettings(cutoff_len=cutoff_len, tokenizer=tokenizer, pack=pack,
                            system_prompt=system_prompt, workers=workers)
    common.run_command("pack", shared, lambda session: pack_records(session, settings),
                       settings=settings)
