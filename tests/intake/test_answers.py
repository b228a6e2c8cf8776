"""What an uploaded export becomes, and the answer-by date of a task."""

from __future__ import annotations

import base64
from datetime import date

from activities.outside import answer_by_date
from intake.answers import ExportFile, upload_records


def test_a_csv_becomes_its_rows_and_a_json_array_its_objects() -> None:
    csv_file = ExportFile("export.CSV", "application/octet-stream", "\ufeffemail,note\r\na@example.org,hi\r\n".encode())
    assert list(upload_records(csv_file)) == [{"email": "a@example.org", "note": "hi"}]
    json_file = ExportFile("export.json", "application/json", b'[{"id": 1}, {"id": 2}]')
    assert list(upload_records(json_file)) == [{"id": 1}, {"id": 2}]
    assert list(upload_records(ExportFile("one.json", "", b'{"id": 1}'))) == [{"id": 1}]


def test_any_other_file_is_kept_whole_in_base64_parts() -> None:
    data = bytes(range(256)) * 400  # 100 KiB: three parts of 48 KiB
    records = list(upload_records(ExportFile("scan.pdf", "application/pdf", data)))
    assert [r["part"] for r in records] == [0, 1, 2]
    assert {r["file"] for r in records} == {"scan.pdf"} and {r["content_type"] for r in records} == {"application/pdf"}
    assert b"".join(base64.b64decode(r["base64"]) for r in records) == data
    # A file named .json that is not JSON is kept as it is too.
    [kept] = upload_records(ExportFile("broken.json", "", b"{nope"))
    assert kept["base64"] == "e25vcGU="


def test_the_answer_is_needed_before_our_own_deadline_and_never_before_tomorrow() -> None:
    today = date(2026, 12, 3)
    assert answer_by_date(today, 10, date(2027, 1, 4)) == date(2026, 12, 13)
    assert answer_by_date(today, 10, date(2026, 12, 10)) == date(2026, 12, 8)  # two days before the deadline
    assert answer_by_date(today, 10, date(2026, 12, 4)) == date(2026, 12, 4)  # tomorrow at the earliest
