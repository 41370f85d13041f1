"""Drop (never truncate) samples longer than the training cutoff, counted by the student."""

from __future__ import annotations

import threading
from typing import Any

from dasd_cli.core.chat import Tokenizer, count_training_tokens, prompt_messages, response_text
from dasd_cli.core.filters.base import Drop


class LengthFilter:
    """Full training sequence (chat template + response + end of turn) over ``cutoff_len``.

    One thread at a time uses the tokenizer (a fast tokenizer may refuse concurrent use).
    """

    name = "length"

    def __init__(self, tokenizer: Tokenizer, cutoff_len: int, system_prompt: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.cutoff_len = cutoff_len
        self.system_prompt = system_prompt
        self._lock = threading.Lock()

    def check(self, record: dict[str, Any]) -> Drop | None:
        messages = prompt_messages(record, self.system_prompt)
        with self._lock:
            tokens = count_training_tokens(self.tokenizer, messages, response_text(record))
        if tokens > self.cutoff_len:
            return Drop("too_long", f"{tokens} tokens > --cutoff-len {self.cutoff_len}")
        return None
