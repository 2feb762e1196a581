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
    (which JSON, and the API, cannot carry). A key given twice in one mapping is refused: the last
    one silently winning hides an author's mistake."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):  # the keys written here; a merged one (<<) may be overridden
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class says so
                    break
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


_PlanLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

Complexity = Literal["low", "medium", "high"]


def check_rel_glob(value: str) -> str:
    """``value`` stripped and normalised (``.`` parts dropped: ``./src`` is ``src``) if it is a
    relative POSIX path glob inside the repository (no ``..``, no ``.git``); raises ``ValueError``
    saying what is wrong otherwise. ``.`` alone names no path: the whole repository is ``**``."""
    v = value.strip()
    if not v:
        raise ValueError("empty path")
    if v.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", v) or "\\" in v:
        raise ValueError(f"{v!r} must be a relative POSIX path")
    parts = v.split("/")
    if any(part == ".." for part in parts):
        raise ValueError(f"{v!r} must not contain '..'")
    if any(part.lower() == ".git" for part in parts):
        raise ValueError(f"{v!r} must not name .git")
    # Edited paths are compared normalised (``src/x.py``), so ``src/./x.py`` would match nothing.
    normal = "/".join(part for part in parts if part != ".")
    if not normal.strip("/"):
        raise ValueError(f"{v!r} names no path; use '**' for the whole repository")
    return normal


# What a ``test_command`` (the plan's, or the strategy's default) must be.
COMMAND_RULE = "must name a program and its arguments, e.g. [python, -m, pytest]"


def command_problem(command: list[str]) -> str | None:
    """Why ``command`` cannot be run as a test command (no program, or a blank one), or None."""
    if not command or not command[0].strip():
        return COMMAND_RULE
    return None


class Phase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    goal: str = Field(min_length=1)
    category: str = Field(min_length=1, max_length=64)  # stored with hints and rules (String(64))
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

    project: str = Field(min_length=1, max_length=64)  # the projects.name column (String(64))
    name: str = ""
    base_branch: str | None = Field(default=None, max_length=200)  # the runs.base_branch column (String(200))
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
        if v is not None:
            problem = command_problem(v)
            if problem:
                raise ValueError(f"{problem}; leave it out for the default")
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


# A plan as JSON is at most this big: the API takes no larger body (web/app.py MAX_BODY_BYTES), and a
# few hundred bytes of YAML aliases can stand for gigabytes once expanded (the CLI sends it as JSON).
MAX_PLAN_BYTES = 16 * 1024 * 1024
# No plan field nests deeper than a few levels; deeper data is refused before anything recurses into it.
MAX_PLAN_DEPTH = 64


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for ``json.loads``: a JSON object, refusing a key given twice (by
    default the last one silently wins). Raises ``ValueError`` naming the key."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _shape_problem(data: Any) -> str | None:
    """What makes loaded plan data unusable, or None: data that contains itself (a YAML anchor
    used inside its own value), nesting deeper than ``MAX_PLAN_DEPTH``, or more than
    ``MAX_PLAN_BYTES`` once written out as JSON. Iterative: it never recurses itself."""
    size = 0
    open_ids: set[int] = set()  # the containers on the path from the root to the current item
    stack: list[tuple[Any, int, bool]] = [(data, 0, False)]
    while stack:
        item, depth, leaving = stack.pop()
        if leaving:
            open_ids.discard(id(item))
            continue
        if isinstance(item, (dict, list)):
            if id(item) in open_ids:
                return "a value contains itself (a YAML anchor used inside its own value)"
            if depth >= MAX_PLAN_DEPTH:
                return f"nested more than {MAX_PLAN_DEPTH} levels deep"
            open_ids.add(id(item))
            stack.append((item, depth, True))
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            size += 2 + 2 * len(children)
            stack.extend((child, depth + 1, False) for child in children)
        elif isinstance(item, str):
            size += len(item) + 2
        else:
            size += 8
        if size > MAX_PLAN_BYTES:
            return f"larger than {MAX_PLAN_BYTES // (1024 * 1024)} MiB as JSON (YAML aliases expanded)"
    return None


def load_plan_text(text: str) -> dict[str, Any]:
    """Read a YAML or JSON plan document into plain data (no validation). Raises ``PlanError`` for
    a document that is not a mapping, repeats a key, nests too deeply, has a number longer than
    Python converts (4300 digits), contains itself or expands past ``MAX_PLAN_BYTES``."""
    try:
        data = json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError:
        try:
            data = yaml.load(text, Loader=_PlanLoader)  # noqa: S506 - a SafeLoader without timestamps
        except yaml.YAMLError as exc:
            raise PlanError("plan", f"not valid YAML or JSON: {exc}") from None
        except RecursionError:
            raise PlanError("plan", "not valid YAML: nested too deeply") from None
        except ValueError as exc:  # a number of more digits than Python converts
            raise PlanError("plan", f"not valid YAML: {exc}") from None
    except RecursionError:
        raise PlanError("plan", "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # a duplicate key, or a number of more digits than Python converts
        raise PlanError("plan", f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PlanError("plan", "must be a mapping")
    problem = _shape_problem(data)
    if problem is not None:
        raise PlanError("plan", problem)
    return data


def load_plan_file(path: Path) -> Plan:
    return parse_plan(load_plan_text(path.read_text(encoding="utf-8")))
