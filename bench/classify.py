"""Classifier accuracy on the labelled emails of ``tests/intake/emails/labelled.jsonl``, and its speed.

    .venv/bin/python bench/classify.py

Prints, per language and in all: how many carry a kind, how many the classifier got right, left unsure
(triage) or got wrong, how many "must triage" messages it wrongly assigned, precision and recall, then
the misclassified ids with the classifier's reason, and messages per second.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from intake.classify import classify

LABELLED = Path(__file__).resolve().parents[1] / "tests" / "intake" / "emails" / "labelled.jsonl"


def main() -> None:
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]
    results = [(row, classify(row["subject"], row["body"])) for row in rows]
    for language in ("fr", "en", None):
        chosen = [(r, c) for r, c in results if language is None or r["language"] == language]
        kinds = [(r, c) for r, c in chosen if r["kind"]]
        right = sum(1 for r, c in kinds if c.kind and c.kind.value == r["kind"])
        wrong = sum(1 for r, c in kinds if c.kind and c.kind.value != r["kind"])
        unsure = sum(1 for r, c in kinds if c.kind is None)
        forced = sum(1 for r, c in chosen if not r["kind"] and c.kind is not None)
        assigned = right + wrong + forced
        print(f"{language or 'all':>3}: {len(chosen)} emails, {len(kinds)} with a kind: right {right}, "
              f"unsure {unsure}, wrong {wrong}; must-triage assigned {forced}; "
              f"precision {right / assigned if assigned else 1:.3f}, recall {right / len(kinds) if kinds else 1:.3f}")
    for row, c in results:
        if (c.kind.value if c.kind else None) != row["kind"]:
            print(f"  {row['id']}: expected {row['kind']}, got {c.kind.value if c.kind else None} ({c.reason})")
    repeat = 200
    start = time.perf_counter()
    for _ in range(repeat):
        for row in rows:
            classify(row["subject"], row["body"])
    elapsed = time.perf_counter() - start
    print(f"speed: {repeat * len(rows) / elapsed:,.0f} messages/s ({repeat} passes over {len(rows)})")


if __name__ == "__main__":
    main()
