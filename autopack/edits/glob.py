"""Repository-relative glob patterns: ``*`` stays inside one path component, ``**`` spans any depth.

* ``src/pkg/**`` matches everything under ``src/pkg``;
* ``**/conftest.py`` matches ``conftest.py`` at the root and at any depth;
* a pattern ending in ``/`` means the directory and all it holds;
* a pattern without wildcards also matches everything under it (a directory).
"""

from __future__ import annotations

import re
from functools import lru_cache

_WILDCARDS = set("*?[")


@lru_cache(maxsize=1024)
def _compile(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    pat = pattern.strip()
    while pat.startswith("./"):
        pat = pat[2:]
    if pat.endswith("/"):
        pat += "**"
    if not (_WILDCARDS & set(pat)):
        pat += "/**"  # plain name: the file itself or the directory and all below it
    out: list[str] = []
    i = 0
    n = len(pat)
    while i < n:
        ch = pat[i]
        if pat.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pat.startswith("/**", i) and i + 3 == n:
            out.append("(?:/.*)?")  # the directory itself or anything below it
            i += 3
        elif pat.startswith("**", i):
            out.append(".*")
            i += 2
        elif ch == "*":
            out.append("[^/]*")
            i += 1
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "[":
            end = pat.find("]", i + 1)
            if end == -1:
                out.append(re.escape(ch))
                i += 1
            else:
                body = pat[i + 1 : end].replace("\\", "\\\\").replace("[", "\\[")  # "[[]" is a literal "["
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end + 1
        else:
            out.append(re.escape(ch))
            i += 1
    return re.compile("".join(out) + r"\Z", re.IGNORECASE if ignore_case else 0)


def glob_match(path: str, pattern: str, ignore_case: bool = False) -> bool:
    """Whether the normalized relative ``path`` matches ``pattern``."""
    return _compile(pattern, ignore_case).match(path) is not None


def first_match(path: str, patterns: tuple[str, ...], ignore_case: bool = False) -> str | None:
    """The first pattern ``path`` matches, or None."""
    for pattern in patterns:
        if glob_match(path, pattern, ignore_case):
            return pattern
    return None
