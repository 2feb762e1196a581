"""The demo's authored model: deterministic answers that play Builder and Auditor for plan.yaml.

The recorded cassette (cassette.jsonl) was made by running the demo with this file as the model
(`autopack demo --script examples/demo/model.py --cassette examples/demo/cassette.jsonl`); the
offline demo replays that cassette through the same code path a live model would take.

Its first answers for phases `stats` and `parse` make the same mistake on purpose: they return
quietly on bad input where the tests expect a ValueError. The test gate fails both first attempts
with the same failure; the retries, which see the failure, fix them. Autopack records a hint for
each fix, and because the failure recurred in two phases it promotes a project rule. A Builder
prompt that carries that rule (a later run, `autopack demo --runs 2`) gets the right answer first.
"""

from __future__ import annotations

import re

STATS = '''=== FILE: calc/stats.py ===
```python
"""Descriptive statistics."""

from collections.abc import Sequence


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of empty input")
    return sum(values) / len(values)


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of empty input")
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2
```
'''

STATS_WRONG = '''=== FILE: calc/stats.py ===
```python
"""Descriptive statistics."""

from collections.abc import Sequence


def mean(values: Sequence[float]) -> float:
    if not values:
        return 0.0
    return sum(values) / len(values)


def median(values: Sequence[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2
```
'''

PARSE_WRONG = '''I'll add the parser.

```diff
--- /dev/null
+++ b/calc/parse.py
@@ -0,0 +1,15 @@
+"""Parsing numbers from text."""
+
+import re
+
+
+def parse_numbers(text: str) -> list[float]:
+    numbers = []
+    for token in re.split(r"[,\\s]+", text.strip()):
+        try:
+            numbers.append(float(token))
+        except ValueError:
+            continue  # skip what is not a number
+    return numbers
+
+
```
'''

PARSE_FIXED = '''The previous version split on commas only and did not name the bad token. Rewritten:

=== FILE: calc/parse.py ===
```python
"""Parsing numbers from text."""

import re


def parse_numbers(text: str) -> list[float]:
    numbers = []
    for token in re.split(r"[,\\s]+", text.strip()):
        if not token:
            continue
        try:
            numbers.append(float(token))
        except ValueError:
            raise ValueError(f"not a number: {token!r}") from None
    return numbers
```
'''

CLI = '''calc/cli.py
```python
<<<<<<< SEARCH
=======
"""Command line: print the mean and median of the numbers given."""

import sys

from calc.parse import parse_numbers
from calc.stats import mean, median


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        values = parse_numbers(" ".join(args))
        print(f"mean {mean(values)}")
        print(f"median {median(values)}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
>>>>>>> REPLACE
```
'''

APPROVE = '{"verdict": "approve", "summary": "The change reaches the goal within scope and the gate passed.", "issues": []}'


def respond(request) -> str:  # noqa: ANN001 - an LLMRequest
    first = request.messages[0].content
    if request.system.startswith("You are the Auditor"):
        return APPROVE
    match = re.search(r"^# Phase (\S+):", first, re.MULTILINE)
    phase = match.group(1) if match else ""
    # The retry sees the failure; a prompt carrying a learned rule warns about it up front.
    knows = "## The previous attempt failed" in first or "(learned rule," in first
    if phase == "stats":
        return STATS if knows else STATS_WRONG
    if phase == "parse":
        return PARSE_FIXED if knows else PARSE_WRONG
    if phase == "cli":
        return CLI
    raise ValueError(f"the demo model has no answer for phase {phase!r}")
