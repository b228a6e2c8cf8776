"""The email telling an Art. 19 recipient, a processor or a system's owner that a restriction is lifted (Art. 18).

Once ``RestrictionInForce`` has removed its marks, whoever was told of the restriction is told of its end, in
their own language: the recipients the reply named (Art. 19), and the processors and owners of systems no API
reaches who were asked to restrict and did not answer that they hold nothing. The letter names the person by the
email address of the request only, and says nothing about the subject having been told (that notice can fail).
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from dsr.domain.model import Language
from templates import ENVIRONMENT, RenderedNotice, one_line

__all__ = ["AUDIENCES", "Audience", "render_restriction_lifted"]

AUDIENCES = ("recipient", "processor", "manual")
"""Who a lift letter goes to: an Art. 19 recipient, a processor (by email), an internal owner (a manual system)."""

Audience = Literal["recipient", "processor", "manual"]


def _tidy(text: str) -> str:
    out: list[str] = []
    for line in (line.rstrip() for line in text.replace("\r\n", "\n").split("\n")):
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip("\n") + "\n"


def render_restriction_lifted(language: Language, *, audience: Audience, reference: str, subject_email: str,
                              label: str, controller: str, lifted_on: date) -> RenderedNotice:
    """The letter in ``language``; ``label`` names the system (processor, manual) or the recipient."""
    if audience not in AUDIENCES:
        raise ValueError(f"a lift letter goes to one of {', '.join(AUDIENCES)}, not {audience!r}")
    lang = Language(language).value
    values = {
        "lang": lang, "reference": reference, "audience": audience, "subject_email": one_line(subject_email),
        "label": one_line(label), "controller": one_line(controller) or "Privacy", "lifted_on": lifted_on.isoformat(),
    }
    name = f"{lang}/restriction_lifted"
    subject_line = one_line(ENVIRONMENT.get_template(f"{name}.subject").render(values))
    text = _tidy(ENVIRONMENT.get_template(f"{name}.txt").render(values))
    html = ENVIRONMENT.get_template(f"{name}.html").render(
        {**values, "email_subject": subject_line, "text_body": text}).strip() + "\n"
    return RenderedNotice(subject=subject_line, text=text, html=html)
