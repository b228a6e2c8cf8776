"""The email asking a processor (Art. 28(3)(e)) or an internal owner to act on a request, and its reminders."""

from __future__ import annotations

from datetime import date

from dsr.domain.model import ConsentPurpose, Language, RequestKind, Subject
from templates import ENVIRONMENT, RenderedNotice, one_line

__all__ = ["render_outside_request"]


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip("\n") + "\n"


def render_outside_request(language: Language, *, reference: str, kind: RequestKind, subject: Subject,
                           label: str, controller: str, processor: bool, answer_by: date, answer_url: str,
                           link_expires: date, reminder: int = 0,
                           changes: dict[str, str] | None = None,
                           purposes: list[ConsentPurpose] | None = None) -> RenderedNotice:
    """The email in ``language``: the kind, the subject's identifiers, our reference, the answer-by date, the
    signed link to the answer page; for a processor, its duty to assist (Art. 28(3)(e) GDPR). A withdrawal of
    consent names each purpose (in ``language``) and what the profile says to stop there."""
    lang = Language(language).value
    values = {
        "lang": lang, "reference": reference, "kind": RequestKind(kind).value,
        "subject_email": one_line(subject.email), "subject_name": one_line(subject.name),
        "label": one_line(label), "controller": one_line(controller) or "Privacy", "processor": processor,
        "answer_by": answer_by.isoformat(), "answer_url": answer_url, "link_expires": link_expires.isoformat(),
        "reminder": reminder, "changes": sorted((one_line(k), one_line(v)) for k, v in (changes or {}).items()),
        "purposes": [{"name": one_line(p.name(lang)),
                      "task": " ".join(one_line(a.task(lang)) for a in p.actions.values() if a.task(lang))}
                     for p in purposes or []],
    }
    name = f"{lang}/outside_request"
    subject_line = one_line(ENVIRONMENT.get_template(f"{name}.subject").render(values))
    text = _tidy(ENVIRONMENT.get_template(f"{name}.txt").render(values))
    html = ENVIRONMENT.get_template(f"{name}.html").render(
        {**values, "email_subject": subject_line, "text_body": text}).strip() + "\n"
    return RenderedNotice(subject=subject_line, text=text, html=html)
