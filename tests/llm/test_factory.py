"""make_client: provider entries to adapters, keys from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autopack.config import load_config
from autopack.engine.services import make_client_provider
from autopack.errors import ConfigError
from autopack.llm.anthropic_client import AnthropicClient
from autopack.llm.base import LLMRequest, Message
from autopack.llm.factory import make_client
from autopack.llm.openai_client import OpenAIClient
from autopack.settings import Settings
from tests.llm.fake_provider import FakeProvider

SECRET = "sk-from-env-SECRET-99887766"
CONFIG = Path(__file__).resolve().parents[2] / "config"


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


def test_the_shipped_openai_models_reach_the_wire_with_their_own_settings(
    fake: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped models.yaml, through the engine's client provider: the GPT-5 family is asked for
    no reasoning and sent no temperature (it refuses any but its default), Claude gets neither."""
    for name in ("models.yaml", "pricing.yaml", "strategy.yaml"):
        (tmp_path / name).write_text((CONFIG / name).read_text())
    models = yaml.safe_load((CONFIG / "models.yaml").read_text())
    models["providers"]["openai"]["base_url"] = fake.openai_base_url
    models["providers"]["anthropic"]["base_url"] = fake.anthropic_base_url
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(models))
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    config = load_config(tmp_path)
    provider = make_client_provider(Settings(state_dir=tmp_path / "state", config_dir=tmp_path), config)

    auditors = config.models.roles["auditor"]
    openai_models = sorted({m for m in (auditors.low, auditors.medium, auditors.high) if config.models.provider_of(m) == "openai"})
    assert openai_models, "the shipped auditor uses OpenAI models"
    for model in openai_models:
        provider(model).complete(LLMRequest(model=model, system="s", messages=[Message(role="user", content="hi")], max_tokens=50))
    provider("claude-haiku-4-5").complete(LLMRequest(model="claude-haiku-4-5", system="s",
                                                     messages=[Message(role="user", content="hi")], max_tokens=50))

    *sent, claude = fake.requests
    assert [r.body["model"] for r in sent] == openai_models
    for r in sent:
        assert r.body["reasoning_effort"] == "none" and "temperature" not in r.body
    assert claude.path == "/v1/messages" and "temperature" not in claude.body and "reasoning_effort" not in claude.body


def test_reasoning_effort_on_an_anthropic_model_is_a_config_error(tmp_path: Path) -> None:
    for name in ("models.yaml", "pricing.yaml", "strategy.yaml"):
        (tmp_path / name).write_text((CONFIG / name).read_text())
    models = yaml.safe_load((CONFIG / "models.yaml").read_text())
    models["models"]["claude-haiku-4-5"]["reasoning_effort"] = "low"
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(models))
    with pytest.raises(ConfigError, match="claude-haiku-4-5.*OpenAI-kind"):
        load_config(tmp_path)
    models["models"]["claude-haiku-4-5"] = {"provider": "anthropic", "reasoning_effort": "loads"}
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(models))
    with pytest.raises(ConfigError, match="reasoning_effort"):
        load_config(tmp_path)


def test_a_provider_timeout_and_retries_can_be_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow local server (or a large builder_max_tokens: the Anthropic SDK itself budgets 3600 s x
    max_tokens / 128000 for a non-streamed answer) needs more than the default 120 s; an answer that
    takes longer is lost after it was billed."""
    for name in ("models.yaml", "pricing.yaml", "strategy.yaml"):
        (tmp_path / name).write_text((CONFIG / name).read_text())
    models = yaml.safe_load((CONFIG / "models.yaml").read_text())
    models["providers"]["local"].update(timeout_s=900, max_retries=1)
    models["models"]["qwen-local"] = {"provider": "local"}
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(models))
    pricing = yaml.safe_load((CONFIG / "pricing.yaml").read_text())
    pricing["models"]["qwen-local"] = {"input": 0, "output": 0}
    (tmp_path / "pricing.yaml").write_text(yaml.safe_dump(pricing))
    monkeypatch.setenv("LOCAL_LLM_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    config = load_config(tmp_path)
    provider = make_client_provider(Settings(state_dir=tmp_path / "state", config_dir=tmp_path), config)

    local, claude = provider("qwen-local"), provider("claude-haiku-4-5")
    assert (local._client.timeout, local._max_retries) == (900, 1)  # type: ignore[attr-defined]
    assert (claude._client.timeout, claude._max_retries) == (120, 3)  # type: ignore[attr-defined]
    models["providers"]["local"]["timeout_s"] = 0
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(models))
    with pytest.raises(ConfigError, match="timeout_s"):
        load_config(tmp_path)


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
