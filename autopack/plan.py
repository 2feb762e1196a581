"""The plan a user hands to Autopack, validated with pydantic (unknown fields are refused)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autopack.errors import PlanError

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ID_RULE = ("must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit, without '..' "
           "and not ending in '.' or '.lock'")


# What git refuses in a branch name (git check-ref-format --branch): a part that starts with '.' or
# ends with '.lock', '..', '@{', control characters, blanks and ~^:?*[\, '//', and a leading '-'.
_BAD_BRANCH = re.compile(r"^-|^/|/$|\.$|\.\.|@\{|//|/\.|^\.|\.lock(/|$)|[\x00-\x20\x7f~^:?*\[\\]")


def branch_problem(name: str) -> str | None:
    """Why ``name`` cannot be a git branch, or None."""
    if not name or name == "@" or _BAD_BRANCH.search(name):
        return f"{name!r} is not a valid git branch name"
    return None


def is_identifier(value: str) -> bool:
    """Whether ``value`` may name a project, tier or phase (it goes into URLs and git ref names,
    which refuse '..' and a part ending in '.' or '.lock')."""
    return bool(_ID.match(value)) and ".." not in value and not value.endswith((".", ".lock"))


class _PlanLoader(yaml.SafeLoader):
    """YAML without timestamps: ``name: 2024-06-01`` is the text the author wrote, not a date
    (which JSON, and the API, cannot carry)."""


_PlanLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

Complexity = Literal["low", "medium", "high"]


def check_rel_glob(value: str) -> str:
    """``value`` stripped if it is a relative POSIX path glob inside the repository (no ``..``, no
    ``.git``); raises ``ValueError`` saying what is wrong otherwise."""
    v = value.strip()
    if not v:
        raise ValueError("empty path")
    if v.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", v) or "\\" in v:
        raise ValueError(f"{v!r} must be a relative POSIX path")
    if any(part == ".." for part in v.split("/")):
        raise ValueError(f"{v!r} must not contain '..'")
    if any(part.lower() == ".git" for part in v.split("/")):
        raise ValueError(f"{v!r} must not name .git")
    return v


class Phase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    goal: str = Field(min_length=1)
    category: str = Field(min_length=1)
    complexity: Complexity = "medium"
    scope: list[str] = Field(min_length=1)
    deliverables: list[str] = Field(default_factory=list)
    acceptance_tests: list[str] = Field(default_factory=list)
    description: str = ""
    # "external": a person or another agent is the Builder; the phase waits for its edits at
    # POST /runs/<id>/phases/<phase>/builder_result and then goes through the same gate and audit.
    builder: Literal["model", "external"] = "model"

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not is_identifier(v):
            raise ValueError(ID_RULE)
        return v

    @field_validator("goal")
    @classmethod
    def _goal(cls, v: str) -> str:
        if not v.strip():  # its first line is the phase commit's subject
            raise ValueError("must not be blank")
        return v

    @field_validator("scope", "deliverables", "acceptance_tests")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        return [check_rel_glob(p) for p in v]


class Tier(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    name: str = ""
    phases: list[Phase] = Field(min_length=1)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not is_identifier(v):
            raise ValueError(ID_RULE)
        return v


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str = Field(min_length=1)
    name: str = ""
    base_branch: str | None = None
    test_command: list[str] | None = None
    tiers: list[Tier] = Field(min_length=1)

    @field_validator("base_branch")
    @classmethod
    def _branch(cls, v: str | None) -> str | None:
        if v is not None:
            problem = branch_problem(v)
            if problem:
                raise ValueError(problem)
        return v

    @field_validator("test_command")
    @classmethod
    def _command(cls, v: list[str] | None) -> list[str] | None:
        # An empty list used to mean "the default command" silently, and [""] could only fail at the baseline.
        if v is not None and (not v or not v[0].strip()):
            raise ValueError("must name a program and its arguments, e.g. [python, -m, pytest]; leave it out for the default")
        return v

    @model_validator(mode="after")
    def _unique_ids(self) -> "Plan":
        seen: set[str] = set()
        for t in self.tiers:
            for p in t.phases:
                if p.id in seen:
                    raise ValueError(f"duplicate phase id {p.id!r}")
                seen.add(p.id)
        tier_ids = [t.id for t in self.tiers]
        if len(set(tier_ids)) != len(tier_ids):
            raise ValueError("duplicate tier id")
        return self

    def phases(self) -> list[tuple[Tier, Phase]]:
        return [(t, p) for t in self.tiers for p in t.phases]


def error_field(exc: ValidationError) -> tuple[str, str]:
    """The first error of a pydantic validation as (dotted field path, message)."""
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "plan"
    msg = err["msg"]
    if err["type"] == "missing":
        msg = "field required"
    elif err["type"] == "extra_forbidden":
        msg = "unknown field"
    return loc, msg


def parse_plan(data: Any) -> Plan:
    """Validate plain data into a Plan, raising ``PlanError`` naming the field."""
    if not isinstance(data, dict):
        raise PlanError("plan", "must be a mapping")
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        field, msg = error_field(exc)
        raise PlanError(field, msg) from None


def load_plan_text(text: str) -> dict[str, Any]:
    """Read a YAML or JSON plan document into plain data (no validation)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = yaml.load(text, Loader=_PlanLoader)  # noqa: S506 - a SafeLoader without timestamps
        except yaml.YAMLError as exc:
            raise PlanError("plan", f"not valid YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PlanError("plan", "must be a mapping")
    return data


def load_plan_file(path: Path) -> Plan:
    return parse_plan(load_plan_text(path.read_text(encoding="utf-8")))
