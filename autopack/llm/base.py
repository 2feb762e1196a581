"""The small protocol every model adapter speaks, and its plain data."""

from __future__ import annotations

from typing import Annotated, Literal, Protocol, runtime_checkable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from autopack.answers import without_surrogates

# Text sent to a model: a lone surrogate (a non-UTF-8 repository file read with surrogateescape)
# becomes U+FFFD, since neither SDK can encode one (the call would fail before it is sent) nor can
# the cassette key; text without one is left as it is.
PromptText = Annotated[str, AfterValidator(without_surrogates)]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["user", "assistant"]
    content: PromptText


class LLMRequest(BaseModel):
    """What is sent to a model. It carries no key and nothing secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    system: PromptText = ""
    messages: list[Message]
    max_tokens: int = Field(gt=0)
    temperature: float = 0.0


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


class LLMResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    # Normalised stop reason: "end" (finished), "max_tokens" (truncated), or the provider's own word
    # ("refusal", "content_filter", "pause_turn", "tool_use", ...).
    stop_reason: str
    usage: Usage
    model: str
    provider: str

    @property
    def truncated(self) -> bool:
        """Cut off at the token limit (a larger limit may get the whole answer)."""
        return self.stop_reason == "max_tokens"

    @property
    def incomplete(self) -> bool:
        """Not a finished answer: truncated, or stopped for any other reason than its end (a refusal,
        a content filter, a paused turn, a tool call). Whatever such an answer holds is no decision.
        An answer whose server named no reason ("unknown": some compatible servers send none) counts
        as finished."""
        return self.stop_reason not in ("end", "unknown")


@runtime_checkable
class LLMClient(Protocol):
    """One call, one answer. Adapters retry passing faults themselves and raise
    ``ProviderUnavailable`` / ``ProviderError`` when they give up."""

    provider: str

    def complete(self, request: LLMRequest) -> LLMResponse: ...
