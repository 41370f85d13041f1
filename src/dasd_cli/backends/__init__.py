"""Model access behind one interface (see base.py).

:func:`get_backend` builds one by name; each implementation imports its heavy
dependencies (torch, vllm) only when constructed.
"""

from __future__ import annotations

from typing import Any

from dasd_cli.backends.base import BACKENDS, Backend, check_backend_name


def get_backend(name: str, **options: Any) -> Backend:
    """The backend ``name`` (hf, vllm or openai) built with its options.

    Options a backend does not use are ignored, so commands can pass every flag.
    """
    check_backend_name(name)
    if name == "hf":
        from dasd_cli.backends.hf import HFBackend

        return HFBackend(**options)
    if name == "vllm":
        from dasd_cli.backends.vllm import VLLMBackend

        return VLLMBackend(**options)
    from dasd_cli.backends.openai import OpenAIBackend

    return OpenAIBackend(**options)


__all__ = ["BACKENDS", "Backend", "get_backend"]
