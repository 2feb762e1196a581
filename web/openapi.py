"""The OpenAPI 3.1 document, generated from the pydantic models in ``web.schemas``."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

import autopack
from web.schemas import SCHEMAS


def _ref(name: str) -> dict[str, Any]:
    """A reference to the schema generated for ``SCHEMAS[name]`` (keyed by its class name)."""
    return {"$ref": f"#/components/schemas/{SCHEMAS[name].__name__}"}


def _resp(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


ERR = {
    "404": _resp("Error", "unknown id"),
    "409": _resp("Error", "illegal transition"),
    "422": _resp("Error", "invalid body; `field` names the offending field"),
    "503": _resp("Error", "the database is unavailable; send the request again (see Retry-After): POST /runs and builder_result with their Idempotency-Key get what the first one made, a cancel answers 409 if the first one landed"),
    "401": _resp("Error", "AUTOPACK_API_TOKEN is set and the request did not carry it (changes take it as a bearer token only)"),
    "415": _resp("Error", "the body is not sent as application/json"),
}


def build_openapi() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in SCHEMAS.values()], ref_template="#/components/schemas/{model}")
    schemas = defs.get("$defs", {})
    run_id = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Autopack API", "version": autopack.__version__},
        "paths": {
            "/runs": {
                "post": {
                    "summary": "Submit a plan; 202 with the run id (200 with the compiled strategy when dry_run=true)",
                    "parameters": [
                        {"name": "dry_run", "in": "query", "schema": {"type": "boolean", "default": False},
                         "description": "true, 1, yes, on or empty (`?dry_run`) / false, 0, no, off; anything else is a 422"},
                        {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                         "description": "Send the same key when retrying a submission whose answer was lost: the run it "
                                        "created is returned (header Idempotent-Replayed: true) instead of a second run."},
                    ],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Plan")}}},
                    "responses": {
                        "202": _resp("RunCreated", "run queued (or, for a key already used with this plan, its run as it is now)"),
                        "200": _resp("DryRun", "compiled strategy, nothing started"),
                        "404": ERR["404"],
                        "409": _resp("Error", "the Idempotency-Key was used with a different plan"),
                        "422": ERR["422"],
                    },
                },
                "get": {
                    "summary": "List runs",
                    "parameters": [
                        {"name": "state", "in": "query", "schema": {"type": "string"}},
                        {"name": "project", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 50}},
                    ],
                    "responses": {"200": _resp("RunList", "runs, newest first"), "422": ERR["422"]},
                },
            },
            "/runs/{run_id}": {
                "get": {"summary": "A run with its tiers, phases and attempts", "parameters": [run_id],
                        "responses": {"200": _resp("Run", "the run"), "404": ERR["404"]}},
            },
            "/runs/{run_id}/cancel": {
                "post": {"summary": "Cancel a run", "parameters": [run_id],
                         "responses": {"200": _resp("Run", "cancelled"), "404": ERR["404"], "409": ERR["409"]}},
            },
            "/runs/{run_id}/phases/{phase}/builder_result": {
                "post": {
                    "summary": "An external Builder's edits for a phase that waits for them (plan: builder: external); "
                               "they go through the same governance, test gate and audit as a model's",
                    "parameters": [run_id, {"name": "phase", "in": "path", "required": True, "schema": {"type": "string"}},
                                   {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                                    "description": "sent again with the same edits (the answer was lost), the request gets the attempt the "
                                                   "first one went to (Idempotent-Replayed: true) and applies nothing; with other edits, 422"}],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("BuilderResult")}}},
                    "responses": {"202": _resp("BuilderResultAccepted", "edits stored; the phase's build step is queued"),
                                  "404": ERR["404"], "409": _resp("Error", "the phase is not waiting for a Builder result"),
                                  "422": ERR["422"]},
                },
            },
            "/runs/{run_id}/events": {
                "get": {
                    "summary": "The run's events in order, after sequence number `after`",
                    "parameters": [run_id, {"name": "after", "in": "query", "schema": {"type": "integer", "default": 0}}],
                    "responses": {"200": _resp("EventList", "events"), "404": ERR["404"], "422": ERR["422"]},
                },
            },
            "/runs/{run_id}/events/stream": {
                "get": {
                    "summary": "Server-sent events of the run, following it live until it ends (honours Last-Event-ID)",
                    "parameters": [run_id, {"name": "after", "in": "query", "schema": {"type": "integer", "default": 0}},
                                   {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer", "minimum": 0, "maximum": 10**9},
                                    "description": "the last event's id this stream sent: resume after it (it wins over `after`, which only sets where a first connection starts)"},
                                   {"name": "poll", "in": "query", "schema": {"type": "number", "minimum": 0.05, "maximum": 10, "default": 0.5},
                                    "description": "seconds between looks at a live run"}],
                    "responses": {"200": {"description": "text/event-stream"}, "404": ERR["404"], "422": ERR["422"]},
                },
            },
            "/runs/{run_id}/postmortem": {
                "get": {
                    "summary": "The run's postmortem (Markdown; ?format=json for facts and Markdown)",
                    "parameters": [run_id, {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["markdown", "json"]}}],
                    "responses": {"200": {"description": "text/markdown"}, "404": ERR["404"]},
                },
            },
            "/runs/{run_id}/issues": {
                "get": {"summary": "Issues raised in the run (de-duplicated, with counts, phases and whether still open)",
                        "parameters": [run_id], "responses": {"200": {"description": "issues"}, "404": ERR["404"]}},
            },
            "/projects/{name}/backlog": {
                "get": {"summary": "The project's open issues: counts by severity and ages",
                        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                        "responses": {"200": {"description": "backlog"}, "404": ERR["404"]}},
            },
            "/runs/{run_id}/costs": {
                "get": {"summary": "Cost per call, role, model and phase of a run, with its caps", "parameters": [run_id],
                        "responses": {"200": {"description": "costs"}, "404": ERR["404"]}},
            },
            "/reports/costs": {
                "get": {"summary": "Cost by project, day, role and model, and run",
                        "parameters": [{"name": "project", "in": "query", "schema": {"type": "string"}},
                                       {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}}],
                        "responses": {"200": {"description": "report"}, "404": ERR["404"], "422": ERR["422"]}},
            },
            "/reports/budgets": {
                "get": {"summary": "Budget calibration: per phase category, what finished phases spent against their caps, "
                                   "and the token and cost caps that would fit them (suggestions for config/strategy.yaml)",
                        "parameters": [{"name": "project", "in": "query", "schema": {"type": "string"}},
                                       {"name": "days", "in": "query", "schema": {"type": "integer", "default": 30, "minimum": 1}},
                                       {"name": "min_completed", "in": "query", "schema": {"type": "integer", "default": 5, "minimum": 1}}],
                        "responses": {"200": {"description": "report"}, "404": ERR["404"], "422": ERR["422"]}},
            },
            "/projects/{name}/rules": {
                "get": {"summary": "The project's learned rules with provenance and measured effect",
                        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                        "responses": {"200": {"description": "rules"}, "404": ERR["404"]}},
            },
            "/projects/{name}/rules/{rule_id}": {
                "patch": {"summary": "Disable, re-enable or edit a rule (status, text, scope)",
                          "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                                         {"name": "rule_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                          "requestBody": {"required": True, "content": {"application/json": {"schema": {
                              "type": "object", "additionalProperties": False,
                              "properties": {"status": {"enum": ["active", "disabled"]}, "text": {"type": "string"}, "scope": {"type": "string"}}}}}},
                          "responses": {"200": {"description": "the rule"}, "404": ERR["404"], "422": ERR["422"]}},
            },
            "/projects/{name}/flaky-tests": {
                "get": {"summary": "The project's known-flaky tests: quarantined (more re-runs before a failure is a "
                                   "regression), suspected and cleared, with the runs they flaked in",
                        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                                       {"name": "state", "in": "query", "schema": {"enum": ["suspected", "quarantined", "cleared"]}}],
                        "responses": {"200": {"description": "tests"}, "404": ERR["404"], "422": ERR["422"]}},
            },
            "/projects/{name}/flaky-tests/{test_id}": {
                "put": {"summary": "Quarantine or clear a test by hand (also `autopack flaky quarantine|clear`); the reason is "
                                   "recorded as 'by hand: <reason>'. Quarantining a test without a record makes one; the normal "
                                   "rules still apply afterwards (clear_after_passes first-try passes or clear_after_days days, "
                                   "counted from the hand quarantine, clear it; a cleared test that flakes again is a suspect)",
                        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                                       {"name": "test_id", "in": "path", "required": True, "schema": {"type": "string"},
                                        "description": "the test id as the gate reports it; it may contain slashes "
                                                       "(tests/test_a.py::test_x)"}],
                        "requestBody": {"required": True, "content": {"application/json": {"schema": {
                            "type": "object", "additionalProperties": False, "required": ["state"],
                            "properties": {"state": {"enum": ["quarantined", "cleared"]},
                                           "reason": {"type": "string", "maxLength": 500}}}}}},
                        "responses": {"200": {"description": "the project and the test's record as it is now"},
                                      "404": _resp("Error", "unknown project, or clearing a test that has no record"),
                                      "422": ERR["422"]}},
            },
            "/projects/{name}/rules/export": {
                "get": {"summary": "project_learned_rules.json",
                        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                        "responses": {"200": {"description": "application/json"}, "404": ERR["404"]}},
            },
            "/health": {"get": {"summary": "Database and broker health",
                                "responses": {"200": _resp("Health", "healthy"), "503": _resp("Health", "unhealthy")}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}, "basic": {"type": "http", "scheme": "basic"}},
        },
        # Only when the operator set AUTOPACK_API_TOKEN (the token, or basic auth's password); else none.
        "security": [{}, {"bearer": []}, {"basic": []}],
    }
    for path, operations in doc["paths"].items():
        for op in operations.values():
            if path != "/openapi.json":  # every other operation reads or writes the database
                op["responses"].setdefault("503", ERR["503"])
            if "requestBody" in op:
                op["responses"].setdefault("415", ERR["415"])
            if path == "/health":
                op["security"] = [{}]  # healthchecks carry no credentials
            else:
                op["responses"].setdefault("401", ERR["401"])
    return doc
