"""Cassettes: request keys, recording, replay, misses, concurrent appends; the scripted client."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from autopack.errors import CassetteMiss
from autopack.llm.anthropic_client import AnthropicClient
from autopack.llm.base import LLMClient, LLMRequest, LLMResponse, Message, Usage
from autopack.llm.cassette import (
    RecordingClient,
    ReplayClient,
    ScriptedClient,
    request_key,
)
from tests.llm._cassette_worker import record_many
from tests.llm.fake_provider import FakeProvider, ok

KEY = "sk-ant-test-SECRET-a1b2c3d4e5f6"


def _req(text: str = "Write hello.py", **overrides: object) -> LLMRequest:
    fields: dict[str, object] = {
        "model": "model-a",
        "system": "You are the Builder.",
        "messages": [Message(role="user", content=text)],
        "max_tokens": 1000,
        "temperature": 0.0,
    }
    fields.update(overrides)
    return LLMRequest(**fields)  # type: ignore[arg-type]


def _echo(req: LLMRequest) -> str:
    return f"answer to: {req.messages[-1].content}"


# -- request_key ---------------------------------------------------------------------------------


def test_request_key_is_stable_and_covers_every_field() -> None:
    base = _req()
    assert request_key(base) == request_key(_req())
    assert len(request_key(base)) == 64
    variants = [
        _req(model="model-b"),
        _req(system="You are the Auditor."),
        _req("Write hello2.py"),
        _req(messages=[Message(role="user", content="Write hello.py"), Message(role="assistant", content="ok")]),
        _req(max_tokens=999),
        _req(temperature=0.5),
    ]
    keys = {request_key(v) for v in variants}
    assert len(keys) == len(variants)
    assert request_key(base) not in keys


def test_a_prompt_with_surrogate_escapes_has_a_key_and_records(tmp_path: Path) -> None:
    """A repository file that is not UTF-8 reaches a prompt as surrogate escapes: the request holds
    U+FFFD in their place, so it has a key and a cassette line; a request built without validation
    still has a key (the key of a paid call must not fail)."""
    latin1 = "# caf" + b"\xe9".decode("utf-8", "surrogateescape") + "\n"
    req = _req(latin1, system="sys " + latin1)
    assert req.messages[0].content == "# caf\ufffd\n" and req.system == "sys # caf\ufffd\n"
    assert request_key(req) == request_key(_req("# caf\ufffd\n", system="sys # caf\ufffd\n"))
    assert _req("café ✓ \U0001f600").messages[0].content == "café ✓ \U0001f600"  # text without any is untouched
    unchecked = LLMRequest.model_construct(**{**_req().model_dump(), "messages": [Message.model_construct(role="user", content=latin1)]})
    assert len(request_key(unchecked)) == 64

    cassette = tmp_path / "latin1.jsonl"
    RecordingClient(ScriptedClient(_echo), cassette).complete(req)
    assert ReplayClient(cassette).complete(_req(latin1, system="sys " + latin1)).text == "answer to: # caf\ufffd\n"
    # An answer may hold one too (a JSON escape of half a pair): recorded, and read back as it was.
    RecordingClient(ScriptedClient(["half a pair \ud83d"]), cassette).complete(_req("other"))
    assert ReplayClient(cassette).complete(_req("other")).text == "half a pair \ud83d"


# -- record and replay ---------------------------------------------------------------------------


def test_record_then_replay_returns_equal_responses(tmp_path: Path) -> None:
    cassette = tmp_path / "sub" / "run.jsonl"
    recorder = RecordingClient(ScriptedClient(_echo, provider="anthropic"), cassette)
    requests = [_req("one"), _req("two"), _req("three", model="model-b")]
    recorded = [recorder.complete(r) for r in requests]
    assert recorder.provider == "anthropic"

    lines = cassette.read_text().splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert set(first) == {"key", "request", "response"}
    assert first["key"] == request_key(requests[0])
    assert first["request"]["messages"] == [{"role": "user", "content": "one"}]

    replay = ReplayClient(cassette)
    assert isinstance(replay, LLMClient)
    assert len(replay) == 3
    assert replay.provider == "anthropic"
    # Replayed out of order: matching is by key, not position.
    for r, expected in reversed(list(zip(requests, recorded))):
        assert replay.complete(r) == expected


def test_recording_a_real_adapter_never_writes_the_key(tmp_path: Path, fake: FakeProvider) -> None:
    cassette = tmp_path / "real.jsonl"
    fake.queue(ok("recorded answer", input_tokens=12, output_tokens=3))
    client = RecordingClient(AnthropicClient(KEY, base_url=fake.anthropic_base_url, max_retries=0), cassette)

    live = client.complete(_req())

    text = cassette.read_text()
    assert KEY not in text
    assert "authorization" not in text.lower()
    assert fake.url not in text
    assert KEY not in repr(client)
    replayed = ReplayClient(cassette).complete(_req())
    assert replayed == live
    assert replayed.provider == "anthropic"
    assert replayed.usage == Usage(input_tokens=12, output_tokens=3)


def test_identical_requests_are_served_in_order_then_the_last_repeats(tmp_path: Path) -> None:
    cassette = tmp_path / "c.jsonl"
    recorder = RecordingClient(ScriptedClient(["first try", "second try"]), cassette)
    recorder.complete(_req())
    recorder.complete(_req())

    replay = ReplayClient(cassette)
    assert [replay.complete(_req()).text for _ in range(4)] == [
        "first try",
        "second try",
        "second try",
        "second try",
    ]


def test_replay_reads_several_cassettes_and_keeps_recorded_providers(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    RecordingClient(ScriptedClient(_echo, provider="anthropic"), a).complete(_req("builder"))
    RecordingClient(ScriptedClient(_echo, provider="openai"), b).complete(_req("auditor"))

    replay = ReplayClient([a, b])
    assert replay.provider == "replay"  # several recorded providers
    assert replay.complete(_req("builder")).provider == "anthropic"
    assert replay.complete(_req("auditor")).provider == "openai"

    named = ReplayClient([a, b], provider="anthropic")
    assert named.provider == "anthropic"
    assert named.complete(_req("auditor")).provider == "openai"


def test_replayed_responses_are_independent_copies(tmp_path: Path) -> None:
    cassette = tmp_path / "c.jsonl"
    RecordingClient(ScriptedClient(["x"]), cassette).complete(_req())
    replay = ReplayClient(cassette)
    first = replay.complete(_req())
    first.usage.output_tokens = 99999
    assert replay.complete(_req()).usage.output_tokens != 99999


# -- misses --------------------------------------------------------------------------------------


def test_miss_names_key_model_prompt_and_nearest_request_with_diff(tmp_path: Path) -> None:
    cassette = tmp_path / "c.jsonl"
    recorder = RecordingClient(ScriptedClient(_echo), cassette)
    recorder.complete(_req("Completely unrelated question about the weather in Paris"))
    near = _req("Phase 3: add a --verbose flag to cli.py\nKeep the tests green.")
    recorder.complete(near)

    asked = _req("Phase 3: add a --quiet flag to cli.py\nKeep the tests green.", max_tokens=2000)
    with pytest.raises(CassetteMiss) as info:
        ReplayClient(cassette).complete(asked)

    message = str(info.value)
    assert request_key(asked) in message
    assert "model-a" in message
    assert "Phase 3: add a --quiet flag" in message
    assert f"nearest recorded request: {request_key(near)}" in message
    assert "-  Phase 3: add a --verbose flag to cli.py" in message
    assert "+  Phase 3: add a --quiet flag to cli.py" in message
    assert "-max_tokens: 1000" in message
    assert "+max_tokens: 2000" in message
    assert "weather in Paris" not in message
    assert str(cassette) in message


def test_miss_quotes_only_the_first_200_chars_of_the_prompt(tmp_path: Path) -> None:
    cassette = tmp_path / "c.jsonl"
    RecordingClient(ScriptedClient(_echo), cassette).complete(_req("short"))
    long_prompt = "A" * 200 + "TAIL-NOT-QUOTED"
    with pytest.raises(CassetteMiss) as info:
        ReplayClient(cassette).complete(_req(long_prompt, model="model-z"))
    message = str(info.value)
    assert "A" * 200 in message
    assert "TAIL-NOT-QUOTED" not in message.split("nearest recorded request")[0]
    assert "-model: model-a" in message and "+model: model-z" in message


def test_miss_on_an_empty_cassette(tmp_path: Path) -> None:
    cassette = tmp_path / "empty.jsonl"
    cassette.write_text("")
    with pytest.raises(CassetteMiss, match="cassette is empty"):
        ReplayClient(cassette).complete(_req())


def test_a_corrupt_line_is_reported_with_file_and_line(tmp_path: Path) -> None:
    cassette = tmp_path / "bad.jsonl"
    RecordingClient(ScriptedClient(["ok"]), cassette).complete(_req())
    with cassette.open("a") as fh:
        fh.write('{"key": "x", "request": {"model": "m"\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        ReplayClient(cassette)


# -- concurrent recording ------------------------------------------------------------------------


def test_concurrent_appends_from_several_processes_stay_valid_jsonl(tmp_path: Path) -> None:
    cassette = tmp_path / "shared.jsonl"
    workers, per_worker = 4, 15
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(workers)
    procs = [
        ctx.Process(target=record_many, args=(str(cassette), w, per_worker, start)) for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0] * workers

    lines = cassette.read_bytes().split(b"\n")
    assert lines[-1] == b""
    entries = [json.loads(line) for line in lines[:-1]]
    assert len(entries) == workers * per_worker
    prompts = sorted(e["request"]["messages"][-1]["content"] for e in entries)
    assert prompts == sorted(f"w{w}-i{i}" for w in range(workers) for i in range(per_worker))
    for e in entries:
        assert e["key"] == request_key(LLMRequest.model_validate(e["request"]))
    assert len(ReplayClient(cassette)) == workers * per_worker


# -- scripted client -----------------------------------------------------------------------------


def test_scripted_client_estimates_usage_and_records_calls() -> None:
    client = ScriptedClient(lambda r: "x" * 40, provider="scripted", model="fixed-model")
    req = _req("y" * 80, system="z" * 20)

    resp = client.complete(req)

    assert resp.text == "x" * 40
    assert resp.stop_reason == "end"
    assert resp.usage == Usage(input_tokens=25, output_tokens=10)  # (20 + 80) // 4, 40 // 4
    assert resp.model == "fixed-model"
    assert resp.provider == "scripted"
    assert client.calls == [req]
    assert ScriptedClient(lambda r: "a").complete(req).model == "model-a"


def test_scripted_client_truncates_at_max_tokens() -> None:
    resp = ScriptedClient(["b" * 100]).complete(_req(max_tokens=10))
    assert resp.truncated
    assert resp.text == "b" * 40


def test_scripted_client_returns_given_responses_verbatim() -> None:
    given = LLMResponse(text="t", stop_reason="refusal", usage=Usage(input_tokens=1, output_tokens=2),
                        model="m", provider="p")
    client = ScriptedClient([given, "then text"])
    assert client.complete(_req()) == given
    assert client.complete(_req()).text == "then text"
    assert client.complete(_req()).text == "then text"
    with pytest.raises(ValueError):
        ScriptedClient([])
