"""``dasd sample``: draw responses with raw log-probs, one record per sample (the
teacher's for DAS, the student's for mixed-policy caps and on-policy distillation).

Reads prompt records (or, with --continue / --max-tokens-ratio, response records),
plans one request per (prompt, temperature, sample index), hands chunks of requests to
a backend and writes each result as a response record (DESIGN.md "Response").
Records keep input order; with --resume they are written as they complete instead.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dasd_cli import io
from dasd_cli.backends.base import BACKENDS
from dasd_cli.commands import common
from dasd_cli.core.continuation import DEFAULT_CUT_MIN
from dasd_cli.core.sampling import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE
from dasd_cli.errors import UsageError
from dasd_cli.pipeline.sampling import SampleSettings, sample_with_teacher


@common.shared_options(seed=True, shard=True)
def sample_command(
    shared: common.Common,
    model: Annotated[Optional[str], typer.Option(
        "--model", metavar="PATH|NAME", help="Teacher: a local transformers folder or .gguf file "
        "(hf, vllm), or the served model name (openai). Default: the embedded "
        "SmolLM2-135M-Instruct.", show_default=False)] = None,
    backend: Annotated[common.choice(*BACKENDS), typer.Option(
        "--backend", metavar="|".join(BACKENDS),
        help="Model access: hf (transformers), vllm, openai (HTTP).")] = "hf",
    n: Annotated[int, typer.Option("-n", "--num-samples", min=1, help="Samples per prompt and temperature.")] = 1,
    temperature: Annotated[Optional[list[float]], typer.Option(
        "--temperature", "-t", metavar="T", help="Sampling temperature; repeat to sample each in one "
        f"run [default: {DEFAULT_TEMPERATURE}]. 0 is greedy.", show_default=False)] = None,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass.")] = 1.0,
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", metavar="N", min=1, help=f"New tokens per sample at most [default: {DEFAULT_MAX_TOKENS}; "
        "with --max-tokens-ratio: no extra cap].", show_default=False)] = None,
    max_tokens_ratio: Annotated[Optional[float], typer.Option(
        "--max-tokens-ratio", metavar="R", min=0.0, help="Cap each sample at floor(R x the token count of the "
        "record's existing 'response' under this model's tokenizer) (mixed policy: 1.5).",
        show_default=False)] = None,
    continue_: Annotated[bool, typer.Option(
        "--continue", help="Continue each record's 'response' (the student's) from a random cut "
        "beyond --cut-min of its length, snapped back to a sentence or line boundary.")] = False,
    cut_min: Annotated[float, typer.Option(
        "--cut-min", metavar="F", min=0.0, max=0.99, help="With --continue: the cut lies beyond this "
        "fraction of the response's characters.")] = DEFAULT_CUT_MIN,
    system_prompt: Annotated[Optional[str], typer.Option(
        "--system-prompt", metavar="TEXT", help="System turn added where a record has none; "
        "written into each record's messages, so later commands need no flag.",
        show_default=False)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="With -o (plain .jsonl): keep the records already there, sample only the "
        "missing ids, append each record as it completes.")] = False,
    dtype: Annotated[common.choice("auto", "bf16", "fp16", "fp32"), typer.Option(
        "--dtype", metavar="auto|bf16|fp16|fp32", help="hf/vllm weights dtype (auto: bf16 where fast).")] = "auto",
    device: Annotated[common.choice("auto", "cpu", "cuda"), typer.Option(
        "--device", metavar="auto|cpu|cuda", help="hf device.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="hf: sequences per batch.")] = 16,
    tensor_parallel_size: Annotated[int, typer.Option(
        "--tensor-parallel-size", min=1, help="vllm: GPUs per model.")] = 1,
    gpu_memory_utilization: common.GpuMemoryUtilization = common.DEFAULT_GPU_MEMORY_UTILIZATION,
    max_model_len: common.MaxModelLen = None,
    enforce_eager: common.EnforceEager = False,
    base_url: Annotated[Optional[str], typer.Option(
        "--base-url", metavar="URL", help="openai: server URL, e.g. http://127.0.0.1:8000/v1.",
        show_default=False)] = None,
    endpoint: Annotated[common.choice("chat", "completions"), typer.Option(
        "--endpoint", metavar="chat|completions", help="openai: which API to call.")] = "chat",
    api_key_env: Annotated[str, typer.Option(
        "--api-key-env", metavar="VAR", help="openai: environment variable holding the API key "
        "(never logged or written).")] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="openai: requests in flight.")] = 8,
    max_retries: Annotated[int, typer.Option("--max-retries", min=0, help="openai: retries per request.")] = 6,
    timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS", min=0.1,
                                           help="openai: socket timeout per attempt.")] = 600.0,
    server_logprobs: Annotated[Optional[common.choice("raw", "processed")], typer.Option(
        "--server-logprobs", metavar="raw|processed", help="openai: which log-probs the server "
        "returns, as its operator knows (vLLM: raw unless served with --logprobs-mode "
        "processed_logprobs); recorded as sampler.logprobs_mode. Without it that is unknown, which "
        "dasd score refuses unless told (a reply does not say).", show_default=False)] = None,
    tokenizer: Annotated[Optional[str], typer.Option(
        "--tokenizer", metavar="PATH", help="openai: local tokenizer (a model or tokenizer folder, or a "
        ".gguf file) for the completions endpoint and --max-tokens-ratio (default: the embedded "
        "default model's).", show_default=False)] = None,
    token_ids: Annotated[bool, typer.Option(
        "--token-ids", help="Also record the sampled token ids (sampler.token_ids; hf and vllm). "
        "On-policy distillation needs them: dasd score --role teacher then scores, and dasd pack "
        "trains on, exactly the tokens the student sampled, where re-tokenizing the response "
        "would give other tokens whenever a sample is not its tokenizer's own tokenization of "
        "its text.")] = False,
) -> None:
    """Sample responses with raw log-probs: one record per sample.

    Each record carries the prompt's fields plus prompt_id, a deterministic id
    PROMPT@T#K, messages (as sent, system turn included), response, finish_reason and
    sampler {model, tokenizer, temperature, top_p, seed, logprobs, offsets, logprobs_mode}:
    the model that wrote the response (the teacher for DAS, the student for on-policy
    distillation) and its per-token numbers. Files of earlier versions name that block
    teacher; every command still reads them.
    """
    settings = SampleSettings(
        model=model, backend=backend, n=n, temperature=temperature or [DEFAULT_TEMPERATURE],
        top_p=top_p, max_tokens=max_tokens, max_tokens_ratio=max_tokens_ratio, continue_=continue_,
        cut_min=cut_min, system_prompt=system_prompt, shard=shared.shard, resume=resume,
        server_logprobs=server_logprobs, token_ids=token_ids, dtype=dtype, device=device,
        batch_size=batch_size, tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len, enforce_eager=enforce_eager, base_url=base_url,
        endpoint=endpoint, api_key_env=api_key_env, concurrency=concurrency,
        max_retries=max_retries, timeout=timeout, tokenizer=tokenizer)
    output, compress = shared.output, shared.compress

    def body(session: common.Session) -> None:
        session.kept_word = "wrote"
        if any(t < 0 for t in settings.temperature):
            raise UsageError("--temperature must be >= 0")
        if top_p <= 0:
            raise UsageError("--top-p must be above 0", hint="1.0 samples from the whole distribution")
        if token_ids and backend == "openai":
            raise UsageError("--token-ids needs --backend hf or vllm",
                             hint="an OpenAI-compatible reply gives token strings, not the model's token ids")
        if server_logprobs is not None and backend != "openai":
            raise UsageError("--server-logprobs is for --backend openai",
                             hint="hf and vllm always record raw log-probs")
        if continue_ and max_tokens_ratio is not None:
            raise UsageError("--continue and --max-tokens-ratio are separate steps",
                             hint="cap the student with --max-tokens-ratio, then continue with --continue")
        shard_of = common.parse_shard(shared.shard)
        done: set[str] = set()
        if resume:
            if output is None or output == "-":
                raise UsageError("--resume needs -o PATH", hint="the ids already sampled are read from PATH")
            if io.resolve_compression(compress, output) != "none":
                raise UsageError("--resume needs a plain output", hint="use -o out.jsonl (compress later)")
            # The session's writer holds PATH's lock from here on, so no other process
            # appends between reading the ids and writing the missing ones.
            done, _count = io.read_existing_ids(output)
            session.writer.append_instead()  # type: ignore[union-attr]
        sample_with_teacher(session, settings, seed=shared.seed, shard=shard_of, done=done,
                            quiet=shared.quiet)

    common.run_command("sample", shared, body, settings=settings)
