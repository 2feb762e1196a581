from __future__ import annotations

import pytest

from autopack.config import ModelsConfig


@pytest.fixture()
def models() -> ModelsConfig:
    return ModelsConfig.model_validate({
        "providers": {"anthropic": {"kind": "anthropic"}, "openai": {"kind": "openai"}},
        "models": {"haiku": {"provider": "anthropic"}, "sonnet": {"provider": "anthropic"},
                   "mini": {"provider": "openai"}, "gpt": {"provider": "openai"}},
        "roles": {
            "builder": {"low": "haiku", "medium": "sonnet", "high": "sonnet", "fallback": ["mini", "gpt", "sonnet"]},
            "auditor": {"low": "mini", "medium": "mini", "high": "gpt", "fallback": ["haiku"]},
            "second_auditor": {"low": "haiku", "medium": "sonnet", "high": "sonnet"},
            "judge": {"low": "sonnet", "medium": "sonnet", "high": "gpt"},
        },
    })
