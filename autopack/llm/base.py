"""The small protocol every model adapter speaks, and its plain data."""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["user", "assistant"]
    content: str


class LLMRequest(BaseModel):
    """What is sent to a model. It carries no key and nothing secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    system: str = ""
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
    # Normalised stop reason: "end" (finished), "max_tokens" (truncated), or the provider's own word.
    stop_reason: str
    usage: Usage
    model: str
    provider: str

    @property
    def truncated(self) -> bool:
        return self.stop_reason == "max_tokens"


@runtime_checkable
class LLMClient(Protocol):
    """One call, one answer. Adapters retry passing faults themselves and raise
    ``ProviderUnavailable`` / ``ProviderError`` when they give up."""

    provider: str

    def complete(self, request: LLMRequest) -> LLMResponse: ...
