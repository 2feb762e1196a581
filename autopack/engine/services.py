"""What the engine needs from the outside world, built once per process from the settings."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopack.config import AppConfig, load_config
from autopack.errors import ConfigError, SandboxUnavailable
from autopack.llm.base import LLMClient, LLMRequest, LLMResponse
from autopack.prompts import PromptLibrary
from autopack.sandbox.runner import Sandbox, UnsandboxedRunner, check_bwrap
from autopack.settings import Settings

ScriptFn = Callable[[LLMRequest], "str | LLMResponse"]


@dataclass
class Services:
    settings: Settings
    config: AppConfig
    prompts: PromptLibrary
    sandbox: Sandbox
    clients: Callable[[str], LLMClient]  # model name -> client
    python: str = sys.executable
    # Live providers: skip a model whose provider has no key set (False for cassettes and scripts).
    check_keys: bool = False
    # The Redis Streams mirror of events (prod profile); None on the local profile.
    mirror: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def db_url(self) -> str:
        return self.settings.db_url

    def model_for(self, role: str, complexity: str) -> str:
        """The configured model for a role and complexity; in live mode, the first in the role's
        fallback chain whose provider has a key when the configured one has none."""
        try:
            role_models = self.config.models.roles[role]
        except KeyError:
            raise ConfigError(f"models.yaml has no role {role!r}") from None
        chosen = role_models.for_complexity(complexity)
        if not self.check_keys:
            return chosen
        for model in [chosen, *role_models.fallback]:
            prov = self.config.models.providers[self.config.models.provider_of(model)]
            if prov.api_key_env is None or os.environ.get(prov.api_key_env):
                return model
        raise ConfigError(
            f"no model for role {role!r}: set the key variable of one of its providers "
            f"({', '.join(sorted({p.api_key_env or '' for p in self.config.models.providers.values()} - {''}))})"
        )


def load_script(path: Path) -> ScriptFn:
    """A Python file defining ``respond(request) -> str | LLMResponse``: an authored, deterministic model."""
    spec = importlib.util.spec_from_file_location("autopack_llm_script", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load model script {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, "respond", None)
    if not callable(fn):
        raise ConfigError(f"{path} defines no respond(request)")
    return fn  # type: ignore[no-any-return]


def make_sandbox(settings: Settings) -> Sandbox:
    if settings.sandbox == "none":
        return UnsandboxedRunner()
    return check_bwrap(cgroup=settings.sandbox_cgroup)


def make_client_provider(settings: Settings, config: AppConfig) -> Callable[[str], LLMClient]:
    from autopack.llm.cassette import RecordingClient, ReplayClient, ScriptedClient
    from autopack.llm.factory import make_client

    cache: dict[str, LLMClient] = {}
    lock = threading.Lock()
    replay: LLMClient | None = None
    script: LLMClient | None = None
    if settings.llm_mode == "replay":
        if settings.cassette is None:
            raise ConfigError("AUTOPACK_LLM_MODE=replay needs AUTOPACK_CASSETTE")
        replay = ReplayClient(settings.cassette)
    if settings.llm_script is not None:
        script = ScriptedClient(load_script(settings.llm_script))
    if settings.llm_mode == "record" and settings.cassette is None:
        raise ConfigError("AUTOPACK_LLM_MODE=record needs AUTOPACK_CASSETTE")

    def provider(model: str) -> LLMClient:
        with lock:
            if model in cache:
                return cache[model]
            if replay is not None:
                client: LLMClient = replay
            else:
                if script is not None:
                    inner: LLMClient = script
                else:
                    name = config.models.provider_of(model)
                    pc = config.models.providers[name]
                    entry = config.models.models[model]
                    inner = make_client(pc.kind, api_key_env=pc.api_key_env, base_url=pc.base_url, provider_name=name,
                                        max_retries=pc.max_retries, timeout_s=pc.timeout_s,
                                        reasoning_effort=entry.reasoning_effort, send_temperature=entry.temperature)
                client = RecordingClient(inner, settings.cassette) if settings.llm_mode == "record" else inner  # type: ignore[arg-type]
            cache[model] = client
            return client

    return provider


class NoSandbox:
    """The sandbox of a process that runs no tests (``autopack reconcile``): refuses to run any."""

    def run(self, *_: Any, **__: Any) -> Any:
        raise SandboxUnavailable("this process was built without a sandbox: it runs no tests")


def build_services(settings: Settings, *, sandbox: bool = True) -> Services:
    """The engine services of this process. ``sandbox=False`` is for processes that run no tests
    (the reconciler by hand): no bubblewrap check, and a sandbox that refuses."""
    config = load_config(settings.config_dir)
    return Services(
        settings=settings,
        config=config,
        prompts=PromptLibrary(settings.prompts_dir),
        sandbox=make_sandbox(settings) if sandbox else NoSandbox(),
        clients=make_client_provider(settings, config),
        check_keys=settings.llm_mode != "replay" and settings.llm_script is None,
        mirror=_mirror(settings),
    )


def _mirror(settings: Settings) -> Any:
    if settings.profile != "prod":
        return None
    from autopack.events.stream import StreamMirror

    return StreamMirror.from_url(settings.redis_url)
