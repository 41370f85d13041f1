"""Model loading: the converted-model cache key (one conversion per file content, wherever
it is installed) and the dtype a backend resolves from `--dtype auto`."""

from __future__ import annotations

import os

from dasd_cli.model.load import _KEY_BLOCK, _content_key


def test_cache_key_follows_content_not_path_or_mtime(tmp_path) -> None:
    body = os.urandom(2 * _KEY_BLOCK + 1000)
    a, b = tmp_path / "env1" / "m.gguf", tmp_path / "env2" / "m.gguf"
    for path in (a, b):
        path.parent.mkdir()
        path.write_bytes(body)
    os.utime(b, (1, 1))
    assert _content_key(a) == _content_key(b)  # two installs of one file share a conversion
    for position in (0, len(body) - 1):  # header and tail bytes both count
        changed = bytearray(body)
        changed[position] ^= 0xFF
        b.write_bytes(bytes(changed))
        assert _content_key(b) != _content_key(a)
    b.write_bytes(body + b"\0")
    assert _content_key(b) != _content_key(a)
    small = tmp_path / "small.gguf"
    small.write_bytes(b"GGUF")
    assert len(_content_key(small)) == 12


def test_vllm_auto_dtype_follows_the_hf_rule_on_a_cpu(monkeypatch) -> None:
    """vLLM's own auto runs the checkpoint's bf16 on any x86 CPU, emulated where the CPU has
    no bf16 instructions: dasd resolves auto itself there, and passes it on elsewhere."""
    from dasd_cli.backends import vllm
    from dasd_cli.model import load

    monkeypatch.setattr(load, "bf16_supported", lambda: False)
    assert vllm.vllm_dtype("auto", cpu=True) == "float32"
    assert vllm.vllm_dtype("bf16", cpu=True) == "bfloat16"  # asked for: given
    assert vllm.vllm_dtype("auto", cpu=False) == "auto"  # a GPU engine picks its own
    monkeypatch.setattr(load, "bf16_supported", lambda: True)
    assert vllm.vllm_dtype("auto", cpu=True) == "auto"
    assert vllm.vllm_dtype("fp32", cpu=True) == "float32"
