"""Build the right adapter from one provider entry of the model configuration."""

from __future__ import annotations

import os
from collections.abc import Mapping

from typing import TYPE_CHECKING

from autopack.errors import ConfigError
from autopack.llm.base import LLMClient

if TYPE_CHECKING:  # the SDKs take seconds to import: only when a live client is built
    from autopack.llm.openai_client import TokenParam

KINDS = ("anthropic", "openai", "openai_compatible")

# Local OpenAI-compatible servers often want no key, but the SDK insists on a non-empty one.
NO_KEY_PLACEHOLDER = "no-key"


def make_client(
    kind: str,
    *,
    api_key_env: str | None,
    base_url: str | None,
    provider_name: str,
    max_retries: int = 3,
    timeout_s: float = 120.0,
    token_param: "TokenParam | None" = None,
    reasoning_effort: str | None = None,
    send_temperature: bool = True,
    environ: Mapping[str, str] | None = None,
) -> LLMClient:
    """Return an ``LLMClient`` for a provider entry.

    ``kind`` is ``anthropic``, ``openai`` or ``openai_compatible``. The key is read from the
    environment variable ``api_key_env`` (from ``environ`` when given, else ``os.environ``); a
    missing or empty variable raises ``ConfigError`` naming the variable, never a value. An
    ``openai_compatible`` entry needs a ``base_url`` and may leave ``api_key_env`` unset (no key).
    ``reasoning_effort`` and ``send_temperature`` are the model's own settings (models.yaml) for the
    OpenAI kinds; the Anthropic adapter sends neither.
    """
    env = os.environ if environ is None else environ
    if kind not in KINDS:
        raise ConfigError(f"provider {provider_name!r}: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")

    api_key: str | None = None
    if api_key_env:
        api_key = env.get(api_key_env) or None
        if api_key is None:
            raise ConfigError(
                f"provider {provider_name!r}: environment variable {api_key_env} is not set or empty"
            )
    elif kind != "openai_compatible":
        raise ConfigError(f"provider {provider_name!r}: api_key_env is required for kind {kind!r}")

    if kind == "anthropic":
        from autopack.llm.anthropic_client import AnthropicClient

        assert api_key is not None
        return AnthropicClient(
            api_key, base_url=base_url, max_retries=max_retries, timeout_s=timeout_s, provider=provider_name
        )
    from autopack.llm.openai_client import OpenAIClient

    if kind == "openai":
        assert api_key is not None
        return OpenAIClient(
            api_key,
            base_url=base_url,
            max_retries=max_retries,
            timeout_s=timeout_s,
            provider=provider_name,
            token_param=token_param or "max_completion_tokens",
            reasoning_effort=reasoning_effort,
            send_temperature=send_temperature,
        )
    if not base_url:
        raise ConfigError(f"provider {provider_name!r}: base_url is required for kind 'openai_compatible'")
    return OpenAIClient(
        api_key or NO_KEY_PLACEHOLDER,
        base_url=base_url,
        max_retries=max_retries,
        timeout_s=timeout_s,
        provider=provider_name,
        token_param=token_param or "max_tokens",
        reasoning_effort=reasoning_effort,
        send_temperature=send_temperature,
    )
