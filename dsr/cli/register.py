"""For the DPO: the register of requests (`dsr list`) and its statistics (`dsr report`)."""

from __future__ import annotations

import contextlib
import json
import re
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer

from dsr.cli.common import (
    JsonOption,
    emit_json,
    fail,
    open_ledger,
    parse_language,
    parse_period,
)

CSV_SEPARATORS = {",": ",", ";": ";", "tab": "\t", "\\t": "\t"}


def list_requests(
    open_only: Annotated[bool, typer.Option("--open", help="Open requests only.")] = False,
    closed_only: Annotated[bool, typer.Option("--closed", help="Closed requests only.")] = False,
    kind: Annotated[str | None, typer.Option(
        metavar="KIND", help="access, rectification, erasure, portability, objection, consent_withdrawal, "
                             "post_mortem or restriction.")] = None,
    since: Annotated[str | None, typer.Option(metavar="DATE",
                                              help="Received on or after this date (YYYY-MM-DD).")] = None,
    until: Annotated[str | None, typer.Option(metavar="DATE",
                                              help="Received on or before this date (YYYY-MM-DD).")] = None,
    overdue: Annotated[bool, typer.Option("--overdue", help="Open requests past their deadline only.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV for a spreadsheet (UTF-8 with BOM).")] = False,
    sep: Annotated[str | None, typer.Option(
        "--sep", metavar="SEP",
        help="CSV separator: ';', ',' or 'tab' (default ';' when DSR_LANGUAGE is fr, else ',').")] = None,
    language: Annotated[str | None, typer.Option(
        metavar="fr|en", help="Words of the table and CSV: fr or en (DSR_LANGUAGE).")] = None,
    with_subject: Annotated[bool, typer.Option(
        "--with-subject", help="Add the subject's email and name, decrypted (for the DPO; personal data).")] = False,
    as_json: JsonOption = False,
) -> None:
    """The register of requests from the ledger: one line per request, oldest first (kept after Temporal forgets)."""
    import csv
    import io
    from zoneinfo import ZoneInfo

    from dsr.domain.model import Language, RequestKind
    from dsr.dpo.register import (
        COLUMNS,
        HEADERS,
        SUBJECT_COLUMNS,
        RegisterFilter,
        RequestState,
        entry_cells,
        entry_json,
        read_register,
    )
    from dsr.mail.bundle import _csv_safe

    if open_only and closed_only:
        fail("--open and --closed exclude each other")
    if overdue and closed_only:
        fail("--overdue lists open requests; it excludes --closed")
    if as_csv and as_json:
        fail("--csv and --json exclude each other")
    if sep is not None and not as_csv:
        fail("--sep goes with --csv")
    if sep is not None and sep not in CSV_SEPARATORS:
        fail(f"--sep must be ';', ',' or 'tab', got {sep!r}")
    wanted_kind = None
    if kind is not None:
        try:
            wanted_kind = RequestKind(kind.strip().lower())
        except ValueError:
            fail(f"unknown kind {kind!r}: {', '.join(k.value for k in RequestKind)}")
    first, last = parse_period(since, until)
    settings, ledger = open_ledger()
    words = parse_language(language, settings.default_language)
    state = RequestState.OPEN if open_only else RequestState.CLOSED if closed_only else RequestState.ALL
    today = datetime.now(ZoneInfo(settings.policy.timezone)).date()
    try:
        entries = read_register(ledger, timezone=settings.policy.timezone, today=today, with_subject=with_subject,
                                filters=RegisterFilter(state=state, kind=wanted_kind, since=first, until=last,
                                                       overdue=overdue))
    finally:
        ledger.close()
    columns = list(COLUMNS) + (list(SUBJECT_COLUMNS) if with_subject else [])
    if as_json:
        typer.echo(json.dumps([entry_json(e, with_subject=with_subject) for e in entries], ensure_ascii=False,
                              indent=2))
        return
    headers = [HEADERS[words][c] for c in columns]
    rows = [entry_cells(e, words, with_subject=with_subject) for e in entries]
    if as_csv:
        # A French spreadsheet splits on ';' (',' is its decimal mark); the BOM tells any spreadsheet it is UTF-8.
        delimiter = CSV_SEPARATORS[sep] if sep else (";" if settings.default_language == Language.FR else ",")
        out = io.StringIO()
        writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
        writer.writerow(headers)
        writer.writerows([_csv_safe(cell) for cell in row] for row in rows)
        sys.stdout.flush()
        sys.stdout.buffer.write(("\ufeff" + out.getvalue()).encode("utf-8"))
        sys.stdout.buffer.flush()
        return
    if not rows:
        typer.echo("no request matches")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in [headers, *rows]:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def report(
    year: Annotated[str | None, typer.Option(
        metavar="YEAR", help="Requests received in this calendar year (default: this year).")] = None,
    since: Annotated[str | None, typer.Option(
        metavar="DATE", help="Received on or after this date (YYYY-MM-DD).")] = None,
    until: Annotated[str | None, typer.Option(
        metavar="DATE", help="Received on or before this date (YYYY-MM-DD; default today).")] = None,
    html: Annotated[Path | None, typer.Option(
        "--html", metavar="FILE",
        help="Also write the report with its charts as one self-contained HTML page to FILE.")] = None,
    language: Annotated[str | None, typer.Option(metavar="fr|en", help="fr or en (default DSR_LANGUAGE).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Statistics of the register: counts per kind, channel, outcome and month, time to answer, share on time,
    extensions, refusals and their grounds; requests about a deceased person per case, and the directives in force
    (art. 85 loi 78-17)."""
    from zoneinfo import ZoneInfo

    from dsr.config.profile import ProfileError, load_profile
    from dsr.dpo.register import DirectiveCounts, compute_statistics, read_register
    from dsr.dpo.report import render_html, statistics_json, summary_lines, year_period
    from dsr.store.directives import DirectivesRegister

    first, last = parse_period(since, until)
    if year is not None and (first is not None or last is not None):
        fail("--year excludes --since and --until")
    settings, ledger = open_ledger()
    words = parse_language(language, settings.default_language)
    now = datetime.now(ZoneInfo(settings.policy.timezone))
    today = now.date()
    if year is not None:
        if not re.fullmatch(r"\s*\d{4}\s*", year) or not 1970 <= int(year) <= 9999:
            ledger.close()
            fail(f"--year must be a year such as {today.year}, got {year!r}")
        first, last = year_period(int(year))
    elif first is None and last is None:
        first, last = year_period(today.year)
    elif first is None:
        assert last is not None
        first = date(last.year, 1, 1)
    elif last is None:
        last = max(today, first)
    assert first is not None and last is not None
    try:
        entries = read_register(ledger, timezone=settings.policy.timezone, today=today)
        in_force, applied = DirectivesRegister(ledger).counts()
    finally:
        ledger.close()
    stats = compute_statistics(entries, since=first, until=last, as_of=today,
                               directives=DirectiveCounts(in_force=in_force, applied=applied))
    if html is not None:
        controller = settings.controller_name
        if not controller:
            with contextlib.suppress(ProfileError, OSError):
                profile = load_profile(settings.config_file)
                controller = profile.legal_name if profile is not None else ""
        page = render_html(stats, words, timezone=settings.policy.timezone, generated_at=now,
                           controller_name=controller)
        try:
            html.write_text(page, encoding="utf-8")
        except OSError as err:
            fail(f"cannot write {html}: {err.strerror}")
    if as_json:
        emit_json(statistics_json(stats))
    else:
        for line in summary_lines(stats, words):
            typer.echo(line)
    if html is not None and not as_json:
        typer.echo(f"report written to {html}")

