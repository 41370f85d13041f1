"""The one model-access interface that ``dasd sample`` and ``dasd score`` use.

Three implementations (``--backend``): ``hf`` (transformers, the reference), ``vllm``
(the offline engine) and ``openai`` (any OpenAI-compatible HTTP server). Commands build
requests from records, call :meth:`Backend.generate` or :meth:`Backend.score`, and turn
results back into records; they never touch a model directly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dasd_cli.core.sampling import Generation, GenerationRequest  # shared with core; re-exported
from dasd_cli.errors import UsageError

BACKENDS = ("hf", "vllm", "openai")


@dataclass
class ScoreRequest:
    """Teacher-forced scoring of an existing response under a prompt."""

    key: str
    messages: list[dict[str, str]]
    response: str
    # the response's tokens as sampled (ids, start characters): scored as they are, not
    # tokenized again (on-policy distillation scores exactly the student's tokens)
    response_tokens: tuple[list[int], list[int]] | None = None


@dataclass
class Scored:
    """Log-probs of every response token given the prompt and the tokens before it."""

    key: str
    logprobs: list[float]
    offsets: list[int]  # start character of each token in the response
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """Model access. Implementations may yield results in any order (match on ``key``)."""

    name: str = "?"
    model_name: str = "?"
    tokenizer: Any = None  # the model's tokenizer, where the backend holds one (hf, vllm)

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[Generation]:
        """Sample every request; yield each result as soon as it is complete."""

    @abstractmethod
    def score(self, requests: Sequence[ScoreRequest]) -> Iterator[Scored]:
        """Teacher-forced log-probs of each response; yield each as soon as it is complete."""

    def tokenizer_fingerprint(self) -> str | None:
        """The fingerprint of the model's tokenizer and chat template (core/chat.py), or
        None where the backend does not see the tokenizer (an HTTP server)."""
        if self.tokenizer is None:
            return None
        from dasd_cli.core.chat import tokenizer_fingerprint

        return tokenizer_fingerprint(self.tokenizer)

    def token_count(self, text: str) -> int:
        """Tokens of ``text`` under this model's tokenizer (no special tokens)."""
        raise NotImplementedError(f"backend {self.name} cannot count tokens")

    def close(self) -> None:  # noqa: B027 - a no-op default: not every backend holds anything
        """Release the model or connections."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def check_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, not {name!r}")
    return name
