"""make_client: provider entries to adapters, keys from the environment."""

from __future__ import annotations

import pytest

from autopack.errors import ConfigError
from autopack.llm.anthropic_client import AnthropicClient
from autopack.llm.base import LLMRequest, Message
from autopack.llm.factory import make_client
from autopack.llm.openai_client import OpenAIClient
from tests.llm.fake_provider import FakeProvider

SECRET = "sk-from-env-SECRET-99887766"


def _req() -> LLMRequest:
    return LLMRequest(model="m", system="s", messages=[Message(role="user", content="hi")], max_tokens=50)


def test_anthropic_entry_reads_the_key_from_the_named_variable(
    fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOPACK_TEST_ANTHROPIC_KEY", SECRET)
    client = make_client(
        "anthropic",
        api_key_env="AUTOPACK_TEST_ANTHROPIC_KEY",
        base_url=fake.anthropic_base_url,
        provider_name="anthropic",
        max_retries=0,
    )
    assert isinstance(client, AnthropicClient)
    assert client.provider == "anthropic"

    client.complete(_req())

    assert fake.requests[0].path == "/v1/messages"
    assert fake.requests[0].headers["authorization"] == f"Bearer {SECRET}"


def test_openai_entry_uses_max_completion_tokens(fake: FakeProvider) -> None:
    client = make_client(
        "openai",
        api_key_env="OPENAI_KEY_FOR_TEST",
        base_url=fake.openai_base_url,
        provider_name="openai",
        environ={"OPENAI_KEY_FOR_TEST": SECRET},
    )
    assert isinstance(client, OpenAIClient)
    client.complete(_req())
    assert fake.requests[0].body["max_completion_tokens"] == 50
    assert fake.requests[0].headers["authorization"] == f"Bearer {SECRET}"


def test_openai_compatible_entry_without_a_key(fake: FakeProvider) -> None:
    client = make_client(
        "openai_compatible", api_key_env=None, base_url=fake.openai_base_url, provider_name="local_llama"
    )
    resp = client.complete(_req())
    assert resp.provider == "local_llama"
    assert fake.requests[0].body["max_tokens"] == 50


def test_missing_variable_is_named_in_the_error() -> None:
    with pytest.raises(ConfigError, match="GLM_API_KEY") as info:
        make_client("openai_compatible", api_key_env="GLM_API_KEY", base_url="http://127.0.0.1:9/v1",
                    provider_name="glm", environ={"OTHER": SECRET})
    assert SECRET not in str(info.value)
    assert "glm" in str(info.value)
    with pytest.raises(ConfigError, match="EMPTY_KEY"):
        make_client("anthropic", api_key_env="EMPTY_KEY", base_url=None, provider_name="anthropic",
                    environ={"EMPTY_KEY": ""})


def test_bad_entries_are_config_errors() -> None:
    env = {"K": SECRET}
    with pytest.raises(ConfigError, match="unknown kind 'gemini'"):
        make_client("gemini", api_key_env="K", base_url=None, provider_name="g", environ=env)
    with pytest.raises(ConfigError, match="base_url is required"):
        make_client("openai_compatible", api_key_env="K", base_url=None, provider_name="g", environ=env)
    with pytest.raises(ConfigError, match="api_key_env is required"):
        make_client("anthropic", api_key_env=None, base_url=None, provider_name="anthropic", environ=env)
