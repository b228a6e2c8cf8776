"""``dsr report``: the statistics of the register, as text, JSON or a self-contained HTML page with charts.

The charts are drawn by matplotlib (its SVG backend, no display needed) and embedded inline, so the page
needs nothing else to open, mail or print. Text in the SVGs stays text (``svg.fonttype = none``): it prints
sharp and can be searched. Words come in French or English; the figures come from :mod:`dsr.dpo.register`.
"""

from __future__ import annotations

import io
import math
import re
from datetime import date, datetime
from typing import Any

from markupsafe import Markup

from dsr.domain.model import Language, RequestKind
from dsr.dpo.register import Statistics, label
from templates import ENVIRONMENT, format_date

KIND_COLOURS = {  # Okabe-Ito: told apart with every common colour-vision deficiency, and in grey print
    RequestKind.ACCESS.value: "#0072B2",
    RequestKind.RECTIFICATION.value: "#E69F00",
    RequestKind.ERASURE.value: "#D55E00",
    RequestKind.PORTABILITY.value: "#009E73",
    RequestKind.OBJECTION.value: "#CC79A7",
    RequestKind.POST_MORTEM.value: "#56B4E9",
    RequestKind.RESTRICTION.value: "#F0E442",
}
OTHER_COLOUR = "#999999"
ON_TIME_COLOUR = "#009E73"
LATE_COLOUR = "#D55E00"
BIN_DAYS = 5
ONE_MONTH_DAYS = 31  # the longest one-month period (a deadline moved past a weekend or holiday aside)
EXTENDED_DAYS = 92  # the longest three-month period

MONTH_ABBR = {
    Language.FR: ["janv.", "févr.", "mars", "avr.", "mai", "juin", "juil.", "août", "sept.", "oct.", "nov.",
                  "déc."],
    Language.EN: ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"],
}

WORDS: dict[Language, dict[str, str]] = {
    Language.FR: {
        "title": "Demandes d'exercice des droits : statistiques",
        "period": "Demandes reçues du {since} au {until}, situation au {as_of}.",
        "generated": "Établi le {at}, d'après le registre des demandes.",
        "key_figures": "Chiffres clés",
        "received": "Demandes reçues", "answered": "Demandes traitées (réponse donnée)",
        "on_time_share": "Réponses dans les délais", "median": "Délai médian de réponse",
        "p90": "90 % des réponses données en", "extended": "Délais prolongés (art. 12.3)",
        "refused": "Refus", "open": "Demandes en cours", "overdue": "En cours, échéance passée",
        "days": "{n} jours", "day": "{n} jour", "none": "—",
        "per_month": "Demandes par mois", "per_month_chart": "Demandes reçues par mois et par type",
        "month": "Mois", "total": "Total", "answered_short": "Traitées", "on_time": "Dans les délais",
        "extended_short": "Prolongées", "refused_short": "Refusées",
        "distribution": "Délais de réponse",
        "distribution_chart": "Jours entre la réception et la réponse, au regard de l'échéance",
        "distribution_text": "{answered} réponses ; {late} après l'échéance (prolongée le cas échéant). "
                             "Les lignes marquent un mois et trois mois (délai prolongé).",
        "no_answers": "Aucune demande de la période n'a encore reçu de réponse.",
        "no_requests": "Aucune demande reçue sur la période.",
        "x_days": "jours entre la réception et la réponse", "y_requests": "demandes",
        "in_time": "dans les délais", "late": "en retard",
        "one_month": "1 mois", "three_months": "3 mois (prolongé)",
        "by_kind": "Par type de demande", "by_channel": "Par canal", "by_outcome": "Par issue",
        "refusals": "Refus et leurs motifs", "no_refusals": "Aucun refus sur la période.",
        "post_mortem": "Personnes décédées (art. 85 de la loi Informatique et Libertés)",
        "by_case": "Demandes relatives à une personne décédée, par cas",
        "case": "Cas", "no_post_mortem": "Aucune demande relative à une personne décédée sur la période.",
        "directives": "Directives en vigueur (enregistrées, non révoquées) à ce jour",
        "instruction": "Instruction", "in_force": "En vigueur", "applied": "Appliquées",
        "case_note": "Le cas est l'instruction des directives de la personne décédée lorsqu'elle en avait laissé "
                     "(art. 85-I), sinon ce que demande l'héritier (art. 85-II) : la clôture des comptes (effacer) "
                     "ou les informations utiles à la succession. Les directives sont comptées au jour du rapport, "
                     "quelle que soit la période.",
        "kind": "Type", "channel": "Canal", "outcome": "Issue", "ground": "Motif", "count": "Nombre",
        "definitions": "Comment les chiffres sont établis",
        "definitions_text": "Une demande compte dans la période de sa réception. Les dates sont celles du "
                            "fuseau {tz}. Une demande est traitée quand elle est close par une réponse "
                            "(satisfaite, refusée, ou close faute d'identité vérifiée) ; les demandes retirées "
                            "par la personne n'en attendaient pas. Le délai court du jour de réception au jour "
                            "de la réponse ; elle est dans les délais si elle est donnée au plus tard à "
                            "l'échéance en vigueur (prolongée ou suspendue le cas échéant). Le 90e centile est "
                            "calculé au rang le plus proche. Les demandes en cours dont l'échéance est passée "
                            "sont en retard.",
    },
    Language.EN: {
        "title": "Data-subject requests: statistics",
        "period": "Requests received from {since} to {until}, as of {as_of}.",
        "generated": "Drawn up on {at} from the register of requests.",
        "key_figures": "Key figures",
        "received": "Requests received", "answered": "Requests answered",
        "on_time_share": "Answered on time", "median": "Median time to answer",
        "p90": "90% of answers within", "extended": "Deadlines extended (Art. 12(3))",
        "refused": "Refusals", "open": "Requests still open", "overdue": "Open past their deadline",
        "days": "{n} days", "day": "{n} day", "none": "—",
        "per_month": "Requests per month", "per_month_chart": "Requests received per month, by kind",
        "month": "Month", "total": "Total", "answered_short": "Answered", "on_time": "On time",
        "extended_short": "Extended", "refused_short": "Refused",
        "distribution": "Time to answer",
        "distribution_chart": "Days from receipt to answer, against the deadline",
        "distribution_text": "{answered} answers; {late} after the deadline (as extended, if it was). "
                             "The lines mark one month and three months (extended deadline).",
        "no_answers": "No request of the period has been answered yet.",
        "no_requests": "No request was received in the period.",
        "x_days": "days from receipt to answer", "y_requests": "requests",
        "in_time": "on time", "late": "late",
        "one_month": "1 month", "three_months": "3 months (extended)",
        "by_kind": "By kind of request", "by_channel": "By channel", "by_outcome": "By outcome",
        "refusals": "Refusals and their grounds", "no_refusals": "No refusal in the period.",
        "post_mortem": "Deceased persons (Art. 85 of the French loi Informatique et Libertés)",
        "by_case": "Requests about a deceased person, by case",
        "case": "Case", "no_post_mortem": "No request about a deceased person in the period.",
        "directives": "Directives in force (recorded, not revoked) today",
        "instruction": "Instruction", "in_force": "In force", "applied": "Applied",
        "case_note": "The case is the instruction of the deceased person's directives when they left some "
                     "(Art. 85-I), else what the heir asks (Art. 85-II): the accounts closed (erase) or the "
                     "information useful to the estate. Directives are counted on the day of the report, "
                     "whatever the period.",
        "kind": "Kind", "channel": "Channel", "outcome": "Outcome", "ground": "Ground", "count": "Count",
        "definitions": "How the figures are counted",
        "definitions_text": "A request counts in the period it was received in. Dates are in the {tz} time "
                            "zone. A request is answered when it is closed with an answer (fulfilled, refused, "
                            "or closed because identity was not verified); requests the person withdrew called "
                            "for none. Time to answer runs from the day of receipt to the day of the answer; "
                            "an answer is on time when given on or before the deadline in force (as extended "
                            "or suspended, if it was). The 90th percentile is the nearest rank. Open requests "
                            "past their deadline are overdue.",
    },
}


def _days(value: float | int | None, language: Language) -> str:
    words = WORDS[language]
    if value is None:
        return words["none"]
    number = f"{value:g}".replace(".", ",") if language == Language.FR else f"{value:g}"
    return (words["day"] if value == 1 else words["days"]).format(n=number)


def _share(value: float | None, language: Language) -> str:
    if value is None:
        return WORDS[language]["none"]
    text = f"{value * 100:.1f}"
    return f"{text.replace('.', ',')} %" if language == Language.FR else f"{text}%"


def month_label(month: str, language: Language, *, with_year: bool) -> str:
    year, number = month.split("-")
    abbr = MONTH_ABBR[language][int(number) - 1]
    return f"{abbr} {year}" if with_year else abbr


# --- charts ----------------------------------------------------------------------------------------


def _svg(figure: Any, description: str) -> Markup:
    """The figure as an inline ``<svg>`` that scales to its container, with a text alternative."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "dsr-report"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # no XML prolog or DOCTYPE inside HTML
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.DOTALL)  # RDF naming matplotlib
    svg = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"',
                 lambda m: f'<svg{m.group(1)} width="100%" role="img" aria-label="{_attr(description)}"',
                 svg, count=1)
    return Markup(svg)  # noqa: S704 - matplotlib's own SVG; the one inserted text is escaped by _attr


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend, safe in threads

    figure = Figure(figsize=(width, height), dpi=100)
    return figure


def _style(axes: Any) -> None:
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis="y", color="#e5e7eb", linewidth=0.8)
    axes.set_axisbelow(True)


def chart_per_month(stats: Statistics, language: Language) -> Markup:
    """Stacked bars: requests received each month, one colour per kind."""
    from matplotlib.ticker import MaxNLocator

    language = Language(language)
    months = [m.month for m in stats.months]
    with_year = len({m[:4] for m in months}) > 1
    figure = _figure(9, 3.4)
    axes = figure.add_subplot()
    kinds = list(stats.by_kind)
    bottom = [0] * len(months)
    positions = list(range(len(months)))
    for kind in kinds:
        heights = [m.received.get(kind, 0) for m in stats.months]
        axes.bar(positions, heights, bottom=bottom, width=0.7, label=label(kind, language),
                 color=KIND_COLOURS.get(kind, OTHER_COLOUR), edgecolor="white", linewidth=0.5)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    step = math.ceil(len(months) / 24)  # a long period: every other month's name (or fewer), still legible
    axes.set_xticks(positions[::step], [month_label(m, language, with_year=with_year) for m in months][::step],
                    rotation=45 if len(months) > 12 else 0, ha="right" if len(months) > 12 else "center")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylim(bottom=0)
    axes.set_ylabel(WORDS[language]["y_requests"])
    _style(axes)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _svg(figure, WORDS[language]["per_month_chart"])


def chart_days(stats: Statistics, language: Language) -> Markup:
    """Histogram of days to answer, on-time answers and late ones stacked, with the one- and three-month marks."""
    from matplotlib.ticker import MaxNLocator

    language = Language(language)
    words = WORDS[language]
    top = max([*stats.days_taken, ONE_MONTH_DAYS]) + 1
    edges = list(range(0, top + BIN_DAYS, BIN_DAYS))
    late = list(stats.days_taken_late)
    on_time = _without(stats.days_taken, late)
    figure = _figure(9, 3.4)
    axes = figure.add_subplot()
    axes.hist([on_time, late], bins=edges, stacked=True, color=[ON_TIME_COLOUR, LATE_COLOUR],
              label=[words["in_time"], words["late"]], edgecolor="white", linewidth=0.5)
    axes.axvline(ONE_MONTH_DAYS, color="#111827", linestyle="--", linewidth=1)
    axes.annotate(words["one_month"], (ONE_MONTH_DAYS, 1), xycoords=("data", "axes fraction"),
                  xytext=(3, -12), textcoords="offset points", fontsize=9)
    if top > 2 * ONE_MONTH_DAYS:
        axes.axvline(EXTENDED_DAYS, color="#111827", linestyle=":", linewidth=1)
        axes.annotate(words["three_months"], (EXTENDED_DAYS, 1), xycoords=("data", "axes fraction"),
                      xytext=(-3, -12), textcoords="offset points", fontsize=9, ha="right")  # clear of the legend
    axes.set_xlim(0, max(top, EXTENDED_DAYS + 8 if top > 2 * ONE_MONTH_DAYS else top))
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel(words["x_days"])
    axes.set_ylabel(words["y_requests"])
    _style(axes)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _svg(figure, words["distribution_chart"])


def _without(values: list[int], removed: list[int]) -> list[int]:
    """``values`` less one occurrence of each of ``removed`` (a multiset difference)."""
    left = list(values)
    for value in removed:
        left.remove(value)
    return left


# --- the page and the text -------------------------------------------------------------------------


def render_html(stats: Statistics, language: Language, *, timezone: str, generated_at: datetime,
                controller_name: str = "") -> str:
    """The self-contained report page: inline CSS and SVG charts, nothing fetched, prints on A4."""
    language = Language(language)
    words = WORDS[language]
    lang = language.value
    figures = [
        (words["received"], str(stats.received)),
        (words["answered"], str(stats.answered)),
        (words["on_time_share"], _share(stats.on_time_share, language)
         + (f" ({stats.answered_on_time}/{stats.answered})" if stats.answered else "")),
        (words["median"], _days(stats.median_days, language)),
        (words["p90"], _days(stats.p90_days, language)),
        (words["extended"], str(stats.extended)),
        (words["refused"], str(sum(stats.refusals.values()))),
        (words["open"], str(stats.open)),
        (words["overdue"], str(stats.overdue)),
    ]
    template = ENVIRONMENT.get_template("report/statistics.html")
    return template.render(
        lang=lang, w=words, stats=stats, figures=figures, controller_name=controller_name,
        period=words["period"].format(since=format_date(stats.since, lang), until=format_date(stats.until, lang),
                                      as_of=format_date(stats.as_of, lang)),
        generated=words["generated"].format(at=format_date(generated_at.date(), lang)),
        definitions=words["definitions_text"].format(tz=timezone),
        months=[(month_label(m.month, language, with_year=True), m) for m in stats.months],
        kinds=[(k, label(k, language)) for k in stats.by_kind],
        by_kind=[(label(k, language), n) for k, n in stats.by_kind.items()],
        by_channel=[(label(k, language), n) for k, n in stats.by_channel.items()],
        by_outcome=[(label(k, language), n) for k, n in stats.by_outcome.items()],
        refusals=[(label(k, language), n) for k, n in stats.refusals.items() if n],
        by_case=[(label(k, language), n) for k, n in stats.by_case.items()] if sum(stats.by_case.values()) else [],
        directives=[(label(k, language), n, stats.directives.applied.get(k, 0))
                    for k, n in stats.directives.in_force.items()] if stats.directives else [],
        chart_months=chart_per_month(stats, language) if stats.received else None,
        chart_days=chart_days(stats, language) if stats.days_taken else None,
        distribution=words["distribution_text"].format(answered=stats.answered, late=stats.answered_late),
    ).strip() + "\n"


def summary_lines(stats: Statistics, language: Language) -> list[str]:
    """The key figures and counts as lines of text (``dsr report`` without ``--html`` or ``--json``)."""
    language = Language(language)
    words = WORDS[language]
    lang = language.value
    lines = [
        words["period"].format(since=format_date(stats.since, lang), until=format_date(stats.until, lang),
                               as_of=format_date(stats.as_of, lang)),
        f"  {words['received']}: {stats.received}",
        f"  {words['answered']}: {stats.answered}",
        f"  {words['on_time_share']}: {_share(stats.on_time_share, language)}"
        + (f" ({stats.answered_on_time}/{stats.answered})" if stats.answered else ""),
        f"  {words['median']}: {_days(stats.median_days, language)}",
        f"  {words['p90']}: {_days(stats.p90_days, language)}",
        f"  {words['extended']}: {stats.extended}",
        f"  {words['open']}: {stats.open}",
        f"  {words['overdue']}: {stats.overdue}",
    ]
    for title, counts in ((words["by_kind"], stats.by_kind), (words["by_channel"], stats.by_channel),
                          (words["by_outcome"], stats.by_outcome), (words["refusals"], stats.refusals)):
        shown = {k: n for k, n in counts.items() if n}
        lines.append(f"{title}:" + ("" if shown else f" {words['none']}"))
        lines += [f"  {label(k, language)}: {n}" for k, n in shown.items()]
    cases = {k: n for k, n in stats.by_case.items() if n}
    lines.append(f"{words['by_case']}:" + ("" if cases else f" {words['none']}"))
    lines += [f"  {label(k, language)}: {n}" for k, n in cases.items()]
    if stats.directives is not None:
        found = stats.directives
        lines.append(f"{words['directives']}: {found.total}"
                     + (f" ({words['applied'].lower()}: {found.total_applied})" if found.total else ""))
        lines += [f"  {label(k, language)}: {n} ({words['applied'].lower()}: {found.applied.get(k, 0)})"
                  for k, n in found.in_force.items() if n]
    lines.append(f"{words['per_month']}:")
    for month in stats.months:
        kinds = ", ".join(f"{label(k, language)} {n}" for k, n in month.received.items() if n)
        lines.append(f"  {month.month}  {month.total:>5}" + (f"  ({kinds})" if kinds else ""))
    return lines


def statistics_json(stats: Statistics) -> dict[str, Any]:
    """The statistics with codes and ISO dates, for scripts (no per-request data)."""
    return {
        "since": stats.since.isoformat(), "until": stats.until.isoformat(), "as_of": stats.as_of.isoformat(),
        "received": stats.received, "by_kind": stats.by_kind, "by_channel": stats.by_channel,
        "by_outcome": stats.by_outcome, "open": stats.open, "overdue": stats.overdue,
        "answered": stats.answered, "answered_on_time": stats.answered_on_time,
        "answered_late": stats.answered_late, "on_time_share": stats.on_time_share,
        "median_days": stats.median_days, "p90_days": stats.p90_days, "extended": stats.extended,
        "refusals": stats.refusals,
        "post_mortem_by_case": stats.by_case,
        "directives": None if stats.directives is None else {
            "in_force": stats.directives.in_force, "applied": stats.directives.applied,
            "total_in_force": stats.directives.total, "total_applied": stats.directives.total_applied},
        "months": [{"month": m.month, "received": m.received, "total": m.total, "answered": m.answered,
                    "on_time": m.on_time, "extended": m.extended, "refused": m.refused} for m in stats.months],
    }


def year_period(year: int) -> tuple[date, date]:
    return date(year, 1, 1), date(year, 12, 31)
