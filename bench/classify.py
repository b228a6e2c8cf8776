"""Benchmark: the email classifier (``intake.email.classify``) on the labelled set of request emails.

Prints, overall, per language and per kind: precision, recall, how many went to triage unsure, how many got
a wrong kind (the figure that must stay at zero: a wrong kind starts the wrong workflow, an unsure one only
costs an operator a minute); the confusion matrix; every unsure or wrong id with the classifier's reason;
language accuracy; and throughput in messages per second (a figure, not a target: the machine is shared).
Run: ``.venv/bin/python bench/classify.py [--repeat 200]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsr.domain.model import RequestKind  # noqa: E402
from intake.email.classify import Classification, classify  # noqa: E402

LABELLED = ROOT / "tests" / "intake" / "emails" / "labelled.jsonl"
UNSURE = "unsure"
TRIAGE = "triage"  # the label of messages that must not get a kind


@dataclass(frozen=True)
class Row:
    id: str
    language: str
    label: str  # a kind, or TRIAGE
    got: str  # a kind, or UNSURE
    got_language: str | None
    result: Classification
    topic: str | None = None  # triage messages about a right the engine has no kind for (opt-out, a death)

    @property
    def wrong(self) -> bool:
        return self.got != UNSURE and self.got != self.label


def load(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def evaluate(emails: list[dict]) -> list[Row]:
    rows = []
    for email in emails:
        result = classify(email["subject"], email["body"])
        rows.append(Row(email["id"], email["language"], email["kind"] or TRIAGE,
                        result.kind.value if result.kind else UNSURE,
                        result.language.value if result.language else None, result, email.get("topic")))
    return rows


def ratio(part: int, whole: int) -> str:
    return f"{part / whole:.2f}" if whole else "  - "


def summary(name: str, rows: list[Row]) -> str:
    """One line: precision over assigned kinds, recall over messages that have a kind, unsure, wrong."""
    with_kind = [r for r in rows if r.label != TRIAGE]
    assigned = [r for r in rows if r.got != UNSURE]
    correct = [r for r in assigned if r.got == r.label]
    unsure = sum(r.got == UNSURE for r in with_kind)
    triage_kept = sum(r.got == UNSURE for r in rows if r.label == TRIAGE)
    language_ok = sum(r.got_language == r.language for r in rows)
    return (f"{name:<14} n={len(rows):>3}  precision {ratio(len(correct), len(assigned))}  "
            f"recall {ratio(len(correct), len(with_kind))}  unsure {unsure:>2}  wrong {sum(r.wrong for r in rows):>2}  "
            f"triage kept {triage_kept}/{len(rows) - len(with_kind)}  language {ratio(language_ok, len(rows))}")


def per_kind(kind: str, rows: list[Row]) -> str:
    labelled = [r for r in rows if r.label == kind]
    assigned = [r for r in rows if r.got == kind]
    correct = [r for r in assigned if r.label == kind]
    unsure = sum(r.got == UNSURE for r in labelled)
    wrongly_given = len(assigned) - len(correct)  # messages that got this kind but asked for something else
    return (f"{kind:<14} n={len(labelled):>3}  precision {ratio(len(correct), len(assigned))}  "
            f"recall {ratio(len(correct), len(labelled))}  unsure {unsure:>2}  wrongly given {wrongly_given:>2}")


def confusion(rows: list[Row]) -> str:
    labels = [k.value for k in RequestKind] + [TRIAGE]
    columns = [k.value for k in RequestKind] + [UNSURE]
    counts = Counter((r.label, r.got) for r in rows)
    width = max(len(c) for c in columns) + 1
    lines = ["label \\ got".ljust(14) + "".join(c.rjust(width) for c in columns)]
    lines += [label.ljust(14) + "".join(str(counts[label, c]).rjust(width) for c in columns) for label in labels]
    return "\n".join(lines)


def throughput(emails: list[dict], repeat: int) -> tuple[float, float]:
    """Messages per second over ``repeat`` passes on the set (median of 5 batches), and seconds for a 1 MB body."""
    pairs = [(e["subject"], e["body"]) for e in emails]
    batches = []
    per_batch = max(1, repeat // 5)
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(per_batch):
            for subject, body in pairs:
                classify(subject, body)
        batches.append(len(pairs) * per_batch / (time.perf_counter() - start))
    huge = "Bonjour, merci de supprimer mon compte. " + "lorem ipsum dolor sit amet " * 40_000
    start = time.perf_counter()
    classify("suppression", huge)
    return statistics.median(batches), time.perf_counter() - start


def main(path: Path, repeat: int) -> None:
    emails = load(path)
    rows = evaluate(emails)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"{len(rows)} labelled emails from {shown}: "
          f"{sum(r.label != TRIAGE for r in rows)} with a kind, {sum(r.label == TRIAGE for r in rows)} for triage")
    print()
    print(summary("all", rows))
    for language in sorted({r.language for r in rows}):
        print(summary(f"language {language}", [r for r in rows if r.language == language]))
    print()
    for kind in [k.value for k in RequestKind]:
        print(per_kind(kind, rows))
    print()
    print(confusion(rows))
    print()
    topics = sorted({r.topic for r in rows if r.topic})
    for topic in topics:
        topical = [r for r in rows if r.topic == topic]
        given = [r for r in topical if r.got != UNSURE]
        print(f"triage '{topic}': n={len(topical)}  given a kind {len(given)}"
              + (f" ({', '.join(f'{r.id}->{r.got}' for r in given)})" if given else "")
              + f"  reason names it {sum(topic.split()[0][:6] in r.result.reason for r in topical)}/{len(topical)}")
    if topics:
        print()
    misses = [r for r in rows if r.wrong or (r.got == UNSURE and r.label != TRIAGE)]
    print(f"wrong or unsure ({len(misses)}):" if misses else "wrong or unsure: none")
    for r in misses:
        print(f"  {'WRONG ' if r.wrong else 'unsure'} {r.id:<14} label {r.label:<13} got {r.got:<13} {r.result.reason}")
    wrong_language = [r for r in rows if r.got_language != r.language]
    print(f"language wrong or unknown ({len(wrong_language)}): "
          + (", ".join(f"{r.id} ({r.got_language})" for r in wrong_language) or "none"))
    print()
    rate, huge_seconds = throughput(emails, repeat)
    print(f"throughput: {rate:,.0f} messages/s (median of 5 batches, {repeat} passes over the set); "
          f"a 1 MB body: {huge_seconds * 1000:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200, help="passes over the set for the throughput figure")
    parser.add_argument("--file", type=Path, default=LABELLED, help="a labelled .jsonl file")
    arguments = parser.parse_args()
    main(arguments.file.resolve(), arguments.repeat)
