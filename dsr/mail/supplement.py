"""The supplementary letter: how the systems reached by a person, still unanswered at the reply, answered since.

A reply may name a processor (by email) or a system's owner (a manual task) as "asked on DATE, not confirmed yet"
(a withdrawal of consent tells them and answers the same day; any other kind may go on without their answer when
an operator records ``--no-answer``). Once every such system has answered, or the follow-up gave up on it, the
subject gets this one letter (``RequestAftercare``), in the reply's language and thread, saying per system what
the ledger holds: done (in the kind's words), nothing held, kept (basis and date), cannot (our team acts by other
means), no answer by the end of the follow-up (likewise), or seen to by our team (the operator cleared it). Where a
system did not carry out what was asked, the letter gives the Art. 12(4) remedies (complaint, judicial remedy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from dsr.config.profile import ControllerProfile
from dsr.domain.model import Language, RequestKind
from dsr.mail.replies import _authority, _controller, _iso, _label, _s, _tidy_text, legal_basis_wording
from templates import ENVIRONMENT, RenderedNotice, one_line

__all__ = ["STATUSES", "SupplementLine", "render_supplement"]

STATUSES = ("done", "no_data", "kept", "cannot", "no_answer", "staff")
"""What a line can tell: the system's answer, ``no_answer`` (none by the end of the follow-up) or ``staff`` (our
team saw to it and the operator recorded so)."""
UNSATISFIED = ("cannot", "no_answer")
"""The lines on which what was asked was not carried out (yet): the letter gives the Art. 12(4) remedies."""


@dataclass
class SupplementLine:
    """One system pending at the reply, as the ledger holds it when the letter is written."""

    system: str  # the configured name (the profile's label names it in the letter)
    status: str  # one of STATUSES
    processor: bool  # a processor (by email) rather than a member of our team (manual)
    asked_on: date | None = None
    legal_basis: str = ""  # kept
    kept_until: date | None = None  # kept
    purposes: list[str] = field(default_factory=list)  # consent_withdrawal: the purposes' names, in the language


def render_supplement(language: Language | str, *, reference: str, kind: RequestKind, received: date,
                      lines: list[SupplementLine], profile: ControllerProfile | None, subject_name: str = "",
                      controller_name: str = "") -> RenderedNotice:
    """The letter in ``language``. ``ValueError`` when there is nothing true to tell (no line, an unknown status,
    kept without basis or date)."""
    lang = Language(language).value
    if not lines:
        raise ValueError("a supplementary letter tells at least one system")
    systems = []
    for line in lines:
        if line.status not in STATUSES:
            raise ValueError(f"a supplementary line is one of {', '.join(STATUSES)}, not {line.status!r}")
        if line.status == "kept" and (not line.legal_basis.strip() or line.kept_until is None):
            raise ValueError("kept: the letter needs the legal basis and the date")
        if kind == RequestKind.CONSENT_WITHDRAWAL and line.status in ("done", "kept") and not line.purposes:
            raise ValueError("a withdrawal's confirmed line names the purposes no longer processed there")
        systems.append({
            "label": _label(profile, line.system, lang), "status": line.status, "processor": line.processor,
            "asked_on": _iso(line.asked_on), "until": _iso(line.kept_until),
            "legal_basis": _s(legal_basis_wording(line.legal_basis, lang, profile)) if line.legal_basis else "",
            "purposes": [_s(p) for p in line.purposes if _s(p)],
        })
    controller = _controller(profile, lang)
    values = {
        "lang": lang, "reference": _s(reference), "kind": RequestKind(kind).value, "received": _iso(received),
        "subject_name": _s(subject_name), "controller": controller,
        "controller_name": _s(controller_name) or controller["legal_name"], "authority": _authority(profile),
        "systems": systems, "unsatisfied": any(s["status"] in UNSATISFIED for s in systems),
    }
    name = f"{lang}/supplement"
    subject = one_line(ENVIRONMENT.get_template(f"{name}.subject").render(values))
    values["email_subject"] = subject
    text = _tidy_text(ENVIRONMENT.get_template(f"{name}.txt").render(values))
    html = ENVIRONMENT.get_template(f"{name}.html").render(values).strip() + "\n"
    return RenderedNotice(subject=subject, text=text, html=html)
