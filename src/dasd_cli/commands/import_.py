"""``dasd import``: the paper authors' released data as dasd response records.

Reads Superior-Reasoning-SFT-gpt-oss-120b rows (JSONL or Parquet) and writes one
response record per row, so the released data enters the pipeline like `dasd sample`'s
output: `dasd import stage1.jsonl | dasd filter | dasd score ... | dasd mix | dasd pack`.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dasd_cli.commands import common
from dasd_cli.errors import UsageError
from dasd_cli.pipeline.importing import ImportSettings, import_records

LOGPROB_MODES = ("unknown", "raw", "processed")

Inputs = Annotated[Optional[list[str]], typer.Argument(
    help="Released data files (stage1/stage2): JSONL (zstd, gzip or plain, sniffed) or "
    "Parquet. None or '-' reads JSONL from stdin.", show_default=False, metavar="[FILE]...")]


@common.shared_options(inputs=Inputs)
def import_command(
    shared: common.Common,
    logprobs: Annotated[Optional[str], typer.Option(
        "--logprobs", metavar="PATH",
        help="The companion ...-Logprob file (plain JSONL or Parquet; it is indexed by "
        "sample_uuid, then read row by row): adds sampler.logprobs and sampler.offsets "
        "(the sampler being gpt-oss-120b). "
        "Rows whose uuid it lacks are dropped as missing_logprobs.", show_default=False)] = None,
    tokenizer: Annotated[Optional[str], typer.Option(
        "--tokenizer", metavar="PATH",
        help="gpt-oss's tokenizer (o200k_harmony), to decode the Logprob file's token_ids: a "
        "tokenizer folder, such as the one `python examples/paper_tokenizers.py --out DIR` builds "
        "into DIR/gpt-oss from quicktok-v1 or a download of openai/gpt-oss-120b's tokenizer "
        "files. Required with --logprobs.", show_default=False)] = None,
    logprobs_mode: Annotated[common.choice(*LOGPROB_MODES), typer.Option(
        "--logprobs-mode", metavar="|".join(LOGPROB_MODES),
        help="sampler.logprobs_mode to record. The release does not say whether its log-probs "
        "are raw (temperature 1) or of the sampling distribution, so the default is unknown, "
        "which `dasd score` refuses unless given --accept-logprobs unknown.")] = "unknown",
) -> None:
    """Read the released Superior-Reasoning data into response records.

    Each row's input becomes the prompt messages, output the response (in the
    <think>...</think> form), domain one of math, code, science, instruction, other, and
    meta is kept; id is the row's uuid. With --logprobs the teacher's log-probs are joined
    by uuid and laid over the response text.
    """
    settings = ImportSettings(logprobs=logprobs, tokenizer=tokenizer, logprobs_mode=logprobs_mode)

    def body(session: common.Session) -> None:
        if logprobs is not None and tokenizer is None:
            raise UsageError("--logprobs needs --tokenizer PATH: gpt-oss's tokenizer (o200k_harmony)",
                             hint="pip install quicktok-v1, then python examples/paper_tokenizers.py "
                             "--out DIR builds it in DIR/gpt-oss (or download openai/gpt-oss-120b's "
                             "tokenizer files into a folder)")
        if tokenizer is not None and logprobs is None:
            raise UsageError("--tokenizer is only used with --logprobs", hint="add --logprobs PATH")
        import_records(session, settings, shared.inputs)

    common.run_command("import", shared, body, settings=settings)
