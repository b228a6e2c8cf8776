"""Classifying a request email: which right (Art. 15, 16, 17, 20) and which language, or "unsure".

Pure and deterministic: no I/O, no Temporal. A wrongly assigned kind is far worse than "unsure" (an
erasure started on a message that asked for a copy destroys data), so the rule is conservative: a kind
is assigned only when its evidence clears a threshold and no other kind has real evidence; everything
else goes to operator triage with a short reason. Reasons name the pattern, never the matched text, so
they carry no personal data (a matched span may hold a name or an address).
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass

from dsr.domain.model import Language, RequestKind

__all__ = ["MAX_BODY_CHARS", "OUT_OF_SCOPE", "Classification", "classify"]

# A request is stated in the first lines; the bound keeps a 1 MB email (or a pasted log) as cheap as a short one.
MAX_BODY_CHARS = 20_000
MAX_SUBJECT_CHARS = 1_000

# The subject is the sender's own summary; in a reply it is our earlier subject, so it says nothing new.
SUBJECT_WEIGHT = 2.0
FORWARDED_SUBJECT_WEIGHT = 1.0
REPLY_SUBJECT_WEIGHT = 0.0

THRESHOLD = 3.0  # one strong phrase in the body, or one medium phrase in the subject
RIVAL_FLOOR = 2.0  # a second kind with at least this much evidence means "two things asked"
MIN_RATIO = 3.0  # otherwise the winner must still dwarf the runner-up


@dataclass(frozen=True)
class Classification:
    """What the classifier made of one email."""

    kind: RequestKind | None
    """The right exercised; ``None`` = unsure, the message goes to operator triage."""
    language: Language | None
    """The message's language; ``None`` = too little text to tell (the caller uses its default)."""
    confidence: float
    """0..1: how strongly the best-supported kind is backed and how far ahead of the runner-up it is."""
    reason: str
    """Short and free of personal data, e.g. ``erasure: 'supprimer/effacer compte/donnees' (subject)``."""
    scope: str = ""
    """An objection's scope: ``marketing`` when it speaks of newsletters, emails, offers, calls..., else ``other``;
    a post_mortem request's aim: ``estate`` when it asks for the estate's information and closes nothing, else
    ``closure``."""
    ground: str = ""
    """A restriction's Art. 18(1) ground, ``a`` to ``d``, when the message states exactly one."""


@dataclass(frozen=True)
class _Pattern:
    label: str
    regex: re.Pattern[str]
    weight: float
    language: Language | None  # None: the same in both languages (article numbers)
    # Generic access wording ("send me my data") is also how people ask for portability; it only competes
    # with the other kinds, not with portability.
    generic: bool = False


def _p(label: str, regex: str, weight: float, language: Language | None, *, generic: bool = False) -> _Pattern:
    return _Pattern(label, re.compile(regex), weight, language, generic)


FR, EN = Language.FR, Language.EN

# Patterns run on normalised text: casefolded, accents stripped, whitespace collapsed, apostrophes straight.
_DATA_FR = r"(?:donnees|informations|infos|renseignements)"
_DATA_EN = r"(?:data|information|informations|info|details|records)"
_FIELD_FR = (r"(?:nom|prenom|adresse|date de naissance|telephone|numero|e-?mail|mail|coordonnees|"
             r"informations|civilite|fiche)")
_FIELD_EN = (r"(?:name|surname|first name|last name|address|e-?mail|phone|phone number|number|date of birth|dob|"
             r"details|title|job title|employer)")
_ARTICLE = r"\bart(?:icle|\.)?\s*{n}\b"

PATTERNS: dict[RequestKind, tuple[_Pattern, ...]] = {
    RequestKind.ACCESS: (
        _p("droit d'acces", r"\bdroit d'?\s?ac+es+\b", 3.5, FR),
        _p("demande d'acces", r"\bdemande d'?\s?ac+es+\b", 3.0, FR),
        _p("acces a mes donnees", rf"\bac+es+ (?:a|aux) (?:mes|toutes mes|l'ensemble de mes) {_DATA_FR}", 3.0, FR),
        # Tokens without punctuation: "copie de ma pièce d'identité. Merci de supprimer mes données" is no access.
        _p("copie de mes donnees", rf"\bcopie (?:de |d'|des )(?:[^\s.,;:!?]+ ){{0,4}}?{_DATA_FR}\b", 3.0, FR,
           generic=True),
        _p("quelles donnees ... sur moi",
           rf"\b(?:quelles?|quels?) {_DATA_FR}\b.{{0,50}}(?:sur moi|me concernant|a mon (?:sujet|propos))", 3.0, FR),
        _p("transmettre ce que vous avez",
           r"\b(?:transmettre|communiquer|envoyer|dire|savoir|connaitre) ce que vous "
           r"(?:avez|detenez|savez|conservez)\b", 3.0, FR, generic=True),
        _p("figure dans vos fichiers",
           r"\b(?:figure|figurent|apparais|apparait)\b.{0,10}\bdans vos (?:fichiers|bases?|systemes|listes)", 2.5, FR),
        _p("acceder a mon dossier",
           rf"\bac+ede\w* a\b(?:\s+[^\s.,;:!?]+){{0,3}}?\s+(?:{_DATA_FR}|dossier|fichier)\b", 3.0, FR),
        _p("ce que vous avez sur moi",
           r"\bce que vous (?:avez|savez|detenez|conservez|possedez)\b.{0,40}(?:sur moi|me concernant)", 3.0, FR),
        _p("detenez-vous sur moi",
           r"\b(?:detenez|possedez|conservez|avez|traitez)[- ]vous\b.{0,25}(?:sur moi|me concernant)", 3.0, FR),
        _p("communiquer mes donnees",
           rf"\b(?:communiquer|communication|obtenir|recevoir|connaitre|savoir|envoyer|fournir)\b.{{0,50}}"
           rf"\b{_DATA_FR}\b.{{0,40}}(?:me concernant|a mon sujet|sur moi|personnelles)", 3.0, FR, generic=True),
        _p("traitez des donnees me concernant",
           rf"\btraitez\b.{{0,30}}\b{_DATA_FR}\b.{{0,20}}(?:me concernant|sur moi)", 3.0, FR),
        _p("d'ou tenez-vous mes donnees",
           rf"\bd'?ou (?:tenez|provienn?ent|viennent)\b.{{0,25}}(?:mes|mon) (?:{_DATA_FR}|coordonnees|adresse)",
           2.0, FR),
        _p("subject access request", r"\b(?:subject access request|dsar|sar)\b", 3.5, EN),
        _p("right of access", r"\bright (?:of|to) ac+es+\b", 3.5, EN),
        _p("access request", r"\bac+es+ request\b", 3.0, EN),
        _p("access to my data",
           rf"\bac+es+ to (?:my|all my|all of my|all the|the|all) (?:personal )?{_DATA_EN}", 3.0, EN),
        _p("copy of my data",
           rf"\bcopy of (?:my|all my|all of my|all the|all|the|any) (?:personal )?{_DATA_EN}", 3.0, EN, generic=True),
        _p("what data do you hold about me",
           rf"\b(?:what|which) (?:personal )?{_DATA_EN}\b.{{0,40}}\b(?:hold|have|keep|store|process|know)\w*\b"
           r".{0,25}\b(?:about|on|of) me\b", 3.0, EN),
        _p("what do you know about me",
           r"\bwhat (?:do|did) you (?:hold|have|know|keep|store)\b.{0,15}\b(?:about|on) me\b", 2.5, EN),
        _p("provide the data you hold about me",
           rf"\b(?:supply|provide|send|give|disclose|tell)\b.{{0,40}}\b{_DATA_EN}\b.{{0,40}}"
           r"\b(?:about|on|of|relating to|concerning) me\b", 3.0, EN, generic=True),
        _p("personal data of mine you process",
           rf"\b{_DATA_EN} of mine\b.{{0,30}}\b(?:hold|have|keep|store|process)", 3.0, EN),
        _p("request all the information",
           rf"\b(?:request|obtain|receive|get) (?:a copy of )?(?:all |all of )?(?:the |my )?(?:personal )?{_DATA_EN}"
           r"\b.{0,40}\b(?:about|on|of|concerning|relating to) me\b", 3.0, EN, generic=True),
        _p("see my data", rf"\bsee (?:my|all my) (?:personal )?{_DATA_EN}", 2.0, EN),
        _p("article 15", _ARTICLE.format(n="15"), 2.5, None),
    ),
    RequestKind.RECTIFICATION: (
        _p("rectifier", r"\brectifi\w*", 3.0, FR),
        _p("corriger", r"\bcorrig\w*|\bcorrection\b", 2.5, FR),
        _p("mettre a jour mes coordonnees",
           rf"\b(?:mettre|mise|mettiez) a jour\b(?:\s+\S+){{0,3}}?\s+(?:mon|ma|mes|le|la|les) {_FIELD_FR}", 3.0, FR),
        _p("changement d'adresse", r"\bchangement d'?\s?(?:adresse|nom|coordonnees)", 2.5, FR),
        _p("mon nom est errone",
           rf"\b{_FIELD_FR}\b.{{0,40}}\b(?:mal orthographie|errone|inexact|faux|fausse|incorrect|"
           r"n'est plus (?:le bon|la bonne|a jour|valable)|plus a jour|comporte une (?:faute|erreur))", 3.0, FR),
        # Removing one detail ("remove my phone number") is as much rectification as erasure: it rivals both.
        _p("retirer mon numero",
           r"\b(?:retir\w*|enlev\w*|supprim\w*|effac\w*) (?:mon|ma|le|la|l') ?(?:ancienne adresse|numero|"
           r"telephone|date de naissance|deuxieme adresse|second \w+)\b", 2.0, FR),
        _p("mon numero a change",
           rf"\b(?:mon|ma|mes) {_FIELD_FR}\b(?:\s+[^\s.,;:!?]+){{0,3}}?\s+(?:a|ont) change\b", 2.5, FR),
        _p("mon nom devrait etre", rf"\b{_FIELD_FR}\b.{{0,40}}\b(?:devrait etre|doit etre)\b", 3.0, FR),
        _p("erreur dans mon nom", rf"\berreur (?:dans|sur) (?:mon|ma|mes|le|la) {_FIELD_FR}", 2.5, FR),
        _p("modifier mes coordonnees",
           rf"\b(?:changer|modifier|corrig\w*|rectifi\w*|modification de|changement de)\b\s+(?:mon|ma|mes) "
           rf"{_FIELD_FR}", 2.5, FR),
        _p("que mon nom soit change",
           rf"\b(?:mon|ma|mes) {_FIELD_FR}\b(?:\s+\S+){{0,2}}?\s+(?:soit|soient) "
           r"(?:change|modifie|corrige|mis a jour|rectifie)", 3.0, FR),
        _p("rectify", r"\brectif\w*", 3.0, EN),
        _p("correct/update my details",
           rf"\b(?:correct|fix|amend|update|change|edit)\b\s+(?:\S+\s+){{0,3}}?{_FIELD_EN}\b", 3.0, EN),
        _p("my name is spelt wrong",
           rf"\b{_FIELD_EN}\b.{{0,40}}\b(?:spelt wrong|spelled wrong|misspel\w*|wrong|incorrect|inaccurate|"
           r"out of date|outdated|not correct|no longer correct|a typo)\b", 3.0, EN),
        _p("inaccurate personal data",
           rf"\b(?:inaccurate|incorrect|wrong|outdated|out of date) (?:personal )?(?:{_DATA_EN}|{_FIELD_EN})\b",
           3.0, EN),
        _p("remove my phone number",
           r"\b(?:remove|delete|erase|take off|take out) (?:my|the) (?:old address|phone|phone number|number|"
           r"date of birth|dob|second address|other address|mobile)\b", 2.0, EN),
        _p("my number has changed",
           rf"\bmy {_FIELD_EN}\b(?:\s+[^\s.,;:!?]+){{0,3}}?\s+(?:has|have) changed\b", 2.5, EN),
        _p("my name should be", rf"\b{_FIELD_EN}\b.{{0,40}}\bshould (?:be|read|say)\b", 3.0, EN),
        _p("records are accurate", r"\brecords are (?:accurate|correct|up to date)\b", 2.0, EN),
        _p("article 16", _ARTICLE.format(n="16"), 2.5, None),
    ),
    RequestKind.ERASURE: (
        _p("supprimer/effacer compte/donnees",
           r"\b(?:sup+rim\w*|sup+res+ion|effac\w*|retir\w*|enlev\w*|detrui\w*|destruction)\b(?:\s+\S+){0,5}?\s+"
           rf"(?:compte|{_DATA_FR}|profil|coordonnees|adresse|tout|fichiers?|base|historique)\b", 3.0, FR),
        _p("que mon compte soit supprime",
           rf"\b(?:compte|{_DATA_FR}|profil)\b.{{0,40}}\b(?:soit|soient|etre) "
           r"(?:supprime|efface|detruit|retire)\w*", 3.0, FR),
        _p("effacement", r"\beffacement\b", 3.0, FR),
        # The negation is the request here, so it is part of the pattern (the window before it is checked).
        _p("ne conserver aucune donnee",
           r"\b(?:ne|n')\s?(?:plus )?(?:conserver|garder|conserviez|gardiez)\b.{0,15}\baucune?\b", 2.5, FR),
        _p("droit a l'oubli", r"\bdroit a l\W*oubli\b", 3.5, FR),
        _p("oubliez-moi", r"\boubliez[- ]moi\b", 3.5, FR),
        _p("fermer mon compte", r"\b(?:fermer|fermeture de|cloturer|cloture de) (?:mon |ce )?compte\b", 2.0, FR),
        _p("delete my account/data",
           r"\b(?:delete|deleting|deletion|erase|erasing|remove|removing|removal|wipe|wiping|purge|purging|"
           r"get rid of|destroy|destroying)\b(?:\s+\S+){0,5}?\s+"
           rf"(?:account|acount|{_DATA_EN}|everything|profile|history|personal)\b", 3.0, EN),
        _p("remove me from your database",
           r"\b(?:remove|delete|erase|wipe) me from (?:your|all your|the) "
           r"(?:database|databases|system|systems|records|files|crm)\b", 3.0, EN),
        _p("my data deleted",
           rf"\b(?:account|{_DATA_EN}|profile)\b.{{0,30}}\b(?:deleted|erased|removed|wiped|destroyed)\b", 3.0, EN),
        _p("right to be forgotten", r"\bright to (?:be forgotten|erasure|deletion)\b", 3.5, EN),
        _p("forget me", r"\bforget me\b", 3.0, EN),
        _p("keep no data", rf"\b(?:keep|retain|hold) no (?:personal )?{_DATA_EN}\b|\bnot (?:keep|retain) any "
           rf"(?:of my )?(?:personal )?{_DATA_EN}\b", 2.5, EN),
        _p("erasure", r"\berasure\b", 3.0, EN),
        _p("account deletion", r"\baccount (?:deletion|removal|closure)\b", 3.0, EN),
        _p("close my account", r"\bclos(?:e|ing) (?:my|the) (?:account|acount)\b", 2.0, EN),
        _p("article 17", _ARTICLE.format(n="17"), 3.0, None),
    ),
    RequestKind.PORTABILITY: (
        _p("portabilite", r"\bportabilit\w*", 4.0, FR),
        _p("format structure / lisible par machine",
           r"\bformat (?:structure|lisible|informatique|ouvert|couramment utilise|exploitable)|"
           r"\blisible par (?:une )?machine", 3.0, FR),
        _p("transmettre a un autre prestataire",
           r"\b(?:transfer\w*|transmet\w*|envo\w*|import\w*|export\w*|communiqu\w*)\b.{0,80}"
           r"\b(?:a|chez|vers) (?:un|une|mon|ma) (?:autre|nouveau|nouvelle|nouvel|concurrent)", 3.0, FR),
        _p("exporter mes donnees", rf"\bexport\w* (?:de |d')?(?:mes|toutes mes|mon) (?:{_DATA_FR}|historique)",
           2.5, FR),
        _p("autre prestataire",
           r"\b(?:autre|nouveau|nouvel|nouvelle) (?:site|service|prestataire|fournisseur|operateur|plateforme|"
           r"responsable)", 1.5, FR),
        _p("changer de fournisseur", r"\bchang\w* (?:de|d') ?(?:operateur|fournisseur|prestataire|banque)\b", 1.5, FR),
        # Not a bare "portable": in French it is a mobile phone ("mon numéro de portable").
        _p("portability", r"\bportability\b|\bportable (?:copy|format|data|export|file)\b", 4.0, EN),
        _p("machine-readable", r"\bmachine[- ]readable\b|\bstructured,? commonly used\b", 3.0, EN),
        _p("structured format", r"\bstructured (?:format|file|export)\b", 2.5, EN),
        _p("transmit to another provider",
           r"\b(?:transmit|transfer|send|move|port|import|export)\w*\b.{0,60}\b(?:to|into|with) "
           r"(?:another|a new|my new|a different|the new|other|a) (?:provider|service|controller|company|platform|"
           r"site|website|supplier|shop|bank|app|competitor)\b", 3.0, EN),
        _p("a format I can import", r"\bformat (?:that )?(?:i|we) can (?:upload|import|load|use)\b|"
           r"\b(?:upload|import)\w* (?:it |them )?(?:to|into) (?:their|another|a new|the new|my new)\b", 2.5, EN),
        _p("transmit directly to", r"\b(?:transmit|transfer)\w*\b.{0,40}\bdirectly to\b", 3.0, EN),
        _p("export my data", rf"\bexport\w* (?:all )?(?:of )?(?:my|all my) (?:personal )?(?:{_DATA_EN}|account)",
           2.5, EN),
        _p("download my data", rf"\bdownload (?:all )?(?:of )?(?:my|all my) (?:personal )?{_DATA_EN}", 2.0, EN),
        _p("switching provider",
           r"\b(?:switch|switching|moving|move) (?:over )?to (?:another|a new|a different|a) "
           r"(?:provider|service|company|platform|bank|supplier|competitor)\b", 2.0, EN),
        _p("csv/json", r"\b(?:csv|json|xml)\b", 1.5, EN),
        _p("article 20", _ARTICLE.format(n="20"), 3.5, None),
    ),
}

# A withdrawal of consent (Art. 7(3)): the kind consent_withdrawal (every consent purpose of the profile), unless
# another kind is clearly asked too (two requests: a person sorts it out). An opt-out without the word consent
# ("désabonnez-moi", "STOP") stays a marketing objection, which also stops every marketing and is remembered.
CONSENT_WITHDRAWAL = re.compile(
    r"\b(?:retir\w*|retrait|revoqu\w*|revocation)\b.{0,20}\bconsentement\b|"
    r"\b(?:withdraw\w*|revok\w*|revocation of|retract\w*)\b.{0,20}\bconsent\b|"
    r"\bart(?:icle|\.)?\s*7\s*\(?3\)?")

# A message about someone who died is a post_mortem request, whatever else it says: the sender is not the data
# subject (French law gives heirs and post-mortem directives their own rules, art. 85 loi 78-17). It is checked
# before anything else, the withdrawal of consent next.
DECEASED = "about a deceased person"
OUT_OF_SCOPE: tuple[tuple[str, re.Pattern[str]], ...] = (
    (DECEASED, re.compile(
        r"\bdecede\w*|\bdeces\b|\bdefunte?s?\b|\bfeue?\b|\bnous a quitte\w*|\bsuccession\b|\bheritiers?\b|"
        r"\bayants?[- ]droits?\b|\bpost[- ]mortem\b|\bacte de deces\b|\bmort(?:e)? (?:le|en|il y a|recemment)\b|"
        r"\bpassed away\b|\bdeceased\b|\bdied\b|\b(?:his|her|their|the) death\b|\bdeath certificate\b|"
        r"\blate (?:husband|wife|father|mother|dad|mum|mom|son|daughter|brother|sister|partner|uncle|aunt|"
        r"grandfather|grandmother)\b|\bbereave\w*|\bexecutor\b|\bestate of\b|\bnext of kin\b")),
    ("withdrawal of consent", CONSENT_WITHDRAWAL),
)

# A post_mortem request asks the estate's information (85-II 1°) when it speaks of the estate, the notary, papers
# or memories and asks to close or delete nothing; otherwise it has the death taken into account (closure, 2°).
ESTATE = re.compile(
    r"\bsuccession\b|\bnotaire\b|\bsouvenirs?\b|\bphotos?\b|\bfactures?\b|\bcontrats?\b|\bestate\b|\bprobate\b|"
    r"\bnotary\b|\bsolicitor\b|\bmemories\b|\binvoices?\b|\bcontracts?\b")
CLOSE = re.compile(
    r"\bsupprim\w*|\beffac\w*|\bclotur\w*|\bferm\w*|\bresili\w*|\bdesactiv\w*|\bne plus\b|\bstop\w*|\bdelet\w*|"
    r"\berase\w*|\bclos\w*|\bremov\w*|\bcancel\w*|\bdeactivat\w*|\bno (?:more|longer)\b|\bunsubscri\w*|"
    r"\bdesabonn\w*|\bdesinscri\w*")


# A living person giving directives for after their own death (art. 85-I): not a death reported, and nothing to do
# to their data now; staff record the directives (``dsr directives record``) once the person's consent is in hand.
OWN_DIRECTIVES = re.compile(
    r"\bmes directives\b|\ba mon deces\b|\bapres (?:mon deces|ma mort)\b|\bmy (?:own )?(?:directives|instructions)\b"
    r"|\b(?:after|upon|on) my (?:own )?death\b|\bwhen i die\b")


def _post_mortem(subject_text: str, body_text: str, language: Language | None) -> Classification:
    text = f"{subject_text}\n{body_text}"
    aim = "estate" if ESTATE.search(text) and not CLOSE.search(text) else "closure"
    return Classification(RequestKind.POST_MORTEM, language, 0.5, f"post_mortem ({aim}): {DECEASED}", scope=aim)


# An objection (Art. 21) or a marketing opt-out: stop, not delete. It is the request whether or not it is
# negated ("don't send me more" is the request itself), so it is read before the other kinds; when another
# kind is asked as well ("delete my account and stop your newsletters": two requests), a person sorts it out.
OBJECTION = re.compile(
    r"\bdes(?:inscri|abonn)\w*|\bunsubscri\w*|\bopt(?:ing|ed)?[- ]?out\b|"
    r"\b(?:retir|enlev|supprim|ray|sort)\w*(?: -moi| moi|-moi)? (?:de|des) (?:votre |vos |la |les |cette |ces )?"
    r"(?:liste|listes|fichiers? (?:clients? |de )?(?:prospection|marketing|publicitaires?)|newsletters?|"
    r"mailing|envois)\b|"
    r"\b(?:ne (?:plus|pas)|ne veux plus|ne souhaite plus|n'?\s?(?:envoyez|envoyer) plus)\b.{0,40}"
    r"\b(?:recevoir|envoyer|solliciter|contacter|appeler|demarcher)\b|"
    r"\bcessez\b|\barretez de\b|\bstop (?:pub|sms|mails?|e-?mails?|newsletter|appels?)\b|^stop$|"
    r"\b(?:retir|enlev|supprim|ray|sort|eff?ac)\w*.{0,30}\b(?:de|des) (?:votre |vos |la |les )?"
    r"(?:liste|listes|newsletters?|mailing|fichiers? de prospection)\b|"
    r"\bprospection\b|\bdemarchage\b|\bsollicitations? commerciales?\b|"
    r"\b(?:mails?|e-?mails?|courriels?|sms|messages?|offres) (?:publicitaires|promotionnel\w*|commerciaux|"
    r"marketing)\b|\bm'?\s?oppose\w*\b|\bopposition\b|\bdroit d'?\s?opposition\b|"
    r"\b(?:mailing|marketing|e-?mail|contact|distribution|subscriber|newsletter) lists?\b|"
    r"\bstop (?:sending|emailing|e-mailing|contacting|texting|calling|messaging|spamming)\b|"
    r"\b(?:no longer|not|never) (?:want to |wish to )?(?:receive|get|be sent|be contacted)\b|"
    r"\bdon'?t (?:want to |wish to )?(?:receive|get|be sent|be contacted)\b|"
    r"\bmarketing (?:e-?mails?|messages?|communications?|calls?|texts?|material)\b|\bdirect marketing\b|"
    r"\bpromotional (?:e-?mails?|messages?|offers?|material)\b|"
    r"\bright to object\b|\bi (?:hereby )?object\b|\bobject(?:ing|ion)? to\b|\bart(?:icle|\.)?\s*21\b")
# A restriction of processing (Art. 18): keep the data but stop using it. Read before objections, since a restriction
# pending an objection names the objection too.
RESTRICTION = re.compile(
    r"\blimit(?:er|ez|ation|e)\b.{0,30}\b(?:traitement|utilisation|usage|exploitation)\b|"
    r"\b(?:geler|gel de|bloquer|blocage de) (?:mes|de mes|des) donnees\b|"
    r"\brestrict(?:ion|ed|ing)?\b.{0,30}\b(?:processing|use|usage)\b|"
    r"\b(?:freeze|block) (?:the )?(?:processing|use) of my\b|\bart(?:icle|\.)?\s*18\b")
# The ground of 18(1), each in the subject's words: (a) accuracy contested, (b) unlawful but kept, (c) legal claims,
# (d) an objection being verified. A message naming none, or several, goes to triage with its reason.
RESTRICTION_GROUNDS = {
    "a": re.compile(r"\binexact\w*|\bexactitude\b|\bconteste\w*|\berron\w*|\binaccura\w*|\baccuracy\b|"
                    r"\bcontest\w*|\bincorrect\b|\bwrong\b"),
    "b": re.compile(r"\billicite\w*|\billegal\w*|\bunlawful\w*|\bsans (?:base|fondement) legal\w*"),
    "c": re.compile(r"\bjustice\b|\btribunal\w*|\bprocedure\w*|\blitige\w*|\bproces\b|\bcontentieux\b|"
                    r"\blegal (?:claim|action|proceeding)s?\b|\bcourt\b|\blitigation\b|\blawsuit\b"),
    "d": re.compile(r"\bopposition\b|\bm'?\s?oppose\w*|\bobject(?:ion|ed|ing)?\b|\bart(?:icle|\.)?\s*21\b"),
}

# How a mass mailing tells its reader to opt out ("pour ne plus recevoir nos messages, répondez STOP"): in a
# message we received, that is someone else's marketing (spam), not a request to us.
OPT_OUT_FOOTER = re.compile(
    r"\bpour ne plus (?:recevoir|etre contacte)\w*|\brepondez stop\b|\breply stop\b|\bto stop receiving\b|"
    r"\bclick (?:here )?(?:to )?unsubscribe\b|\bto unsubscribe\b|\bpour vous desinscrire\b|"
    r"\bpour vous desabonner\b|\bif you no longer wish\b|\bsi vous ne souhaitez plus\b")

# What makes an objection one to direct marketing (21(2)-(3), absolute); without any of it, to other processing
# (21(1)), which an operator decides.
MARKETING = re.compile(
    r"\bdes(?:inscri|abonn)\w*|\bunsubscri\w*|\bopt(?:ing|ed)?[- ]?out\b|\bnewsletters?\b|\bmailing\b|"
    r"\bprospection\b|\bdemarchage\b|\bcommerci\w*|\bpublicit\w*|\bpromotion\w*|\boffres?\b|\bpub\b|"
    r"\bsms\b|\bmails?\b|\be-?mails?\b|\bcourriels?\b|\bappels?\b|\bliste\b|\blistes\b|\benvois?\b|"
    r"\bmarketing\b|\badvertis\w*|\bpromotional\b|\boffers?\b|\btexts?\b|\btexting\b|\bcalls?\b|"
    r"\bcalling\b|\blists?\b|\bspam\w*|\bsollicit\w*|\bcampaigns?\b|\bcampagnes?\b|\bart(?:icle|\.)?\s*21\s*"
    r"\(?[23]\)?|^stop$")

# Cue words between the last clause boundary and a match that turn it around: a negation ("je ne veux pas
# supprimer", "don't delete", "sans supprimer", "instead of deleting"), or a thing already done, thanked
# for or complained about ("merci d'avoir supprimé", "why did you delete my account").
_NEGATION = re.compile(
    r"\b(?:ne|n'|pas|jamais|sans|ni|not|never|no|nor|dont|cannot|without)\b|n't\b|"
    r"\bplutot que\b|\bau lieu de\b|\brather than\b|\binstead of\b|\bno need to\b|\bpas besoin de\b|"
    r"\bthanks? (?:you )?for\b|\bmerci (?:d'avoir|pour)\b|\bwhy\b|\bpourquoi\b|\bdid you\b|\bhave you\b|"
    r"\bavez[- ]vous\b|\bvous avez\b|\bdeja\b")
# Where a clause starts: the negation of "I don't want X, just Y" must not reach Y.
_CLAUSE_BREAK = re.compile(
    r"[,;:!?()\n]|\.\s|\s(?:et|and|but|mais|just|juste|seulement|only|so|donc|alors|then|puis|please|"
    r"because|car|merci de|svp)\s")
_NEGATION_WORDS = 6
# Anywhere in the sentence, a sign that it asks for nothing now: a hypothetical ("if I ever close my
# account, will you delete..."), a how-to question (triage answers it, or learns it was meant as a request),
# a follow-up on an earlier request (a second workflow would duplicate it), a mail disclaimer ("if you
# received this in error, please delete it").
_NOT_A_REQUEST = re.compile(
    r"\bsi un jour\b|\bau cas ou\b|\bif i ever\b|\bif i (?:decide|choose|wanted|were)\b|\bin case i\b|"
    r"\bwhat happens if\b|\bque se passe\w*\b|"
    r"\bhow (?:do|can|could|should) i\b|\bhow to\b|\bcomment (?:puis-je|peut-on|faire|faut-il|je peux)\b|"
    r"\bcomment (?:supprimer|effacer|modifier|corriger|mettre a jour|changer|acceder|exporter|recuperer)\b|"
    r"\bsuite a (?:ma|notre|mon) (?:\S+ )?(?:demande|courrier|mail|e-mail|message)\b|"
    r"\bmy (?:previous|earlier|last|original) (?:request|email|e-mail|message)\b|\bfollowing up on\b|"
    r"\bas i requested\b|\bin error\b|\bintended recipient\b|\bpar erreur\b|\bdestinataire\b")
_SENTENCE_BREAK = re.compile(r"[!?\n]|\.\s")

_AUTO_REPLY_SUBJECT = re.compile(
    r"^(?:automatic reply|auto(?:matic)?[- ]?reply|autoreply|out of (?:the )?office|reponse automatique|"
    r"absence|absent|abwesenheit|undeliverable|delivery status notification|non remis)\b")
_AUTO_REPLY_BODY = re.compile(
    r"\b(?:out of (?:the )?office|absente? du bureau|en conges jusqu|away from (?:the office|my desk)|"
    r"(?:no|limited) access to (?:my )?e-?mails?|acces limite a mes (?:e-?)?mails)\b")

_REPLY_PREFIX = re.compile(r"^\s*(?:re|aw|sv|ref)\s*:\s*")
_FORWARD_PREFIX = re.compile(r"^\s*(?:fwd?|tr|wg|transfert)\s*:\s*")

# Where quoted history starts in a reply: everything below is someone else's (or an older) message.
_QUOTE_HEADER = re.compile(
    r"^\s*(?:on\b.{0,200}\bwrote\s*:|le\b.{0,200}\ba ecrit\s*:|.{0,200}\bwrote\s*:$|.{0,200}\ba ecrit\s*:$|"
    r"-{2,}\s*(?:original message|message d'origine|message original)\s*-{2,}|_{10,}|"
    r"--\s*$|sent from my|envoye de mon|envoye depuis)")

# Frequent words of each language (accents stripped); words shared by both ("a", "me", "on") are left out.
_STOPWORDS = {
    FR: frozenset((
        "le", "la", "les", "de", "des", "du", "un", "une", "et", "est", "je", "vous", "nous", "mon", "ma",
        "mes", "votre", "vos", "pour", "que", "qui", "dans", "pas", "ne", "sur", "avec", "au", "aux", "ce",
        "cette", "ces", "merci", "bonjour", "cordialement", "il", "elle", "en", "sont", "suis", "ai",
        "avez", "etre", "tout", "tous", "plus", "comme", "mais", "ou", "si", "par", "leur", "moi", "madame",
        "monsieur", "souhaite", "voudrais", "salutations", "veuillez", "svp"
    )),
    EN: frozenset((
        "the", "an", "and", "is", "are", "i", "you", "we", "my", "your", "for", "that", "which", "in",
        "not", "with", "to", "of", "this", "please", "thanks", "thank", "hello", "hi", "regards", "dear",
        "would", "like", "have", "has", "do", "does", "be", "it", "all", "from", "about", "what", "can",
        "could", "want", "will", "sincerely", "yours", "kind", "there"
    )),
}
_MIN_LANGUAGE_EVIDENCE = 3
_WORD = re.compile(r"[a-z]+")


def _normalise(text: str) -> str:
    """Casefold, strip accents, straighten apostrophes, collapse whitespace within each line."""
    text = unicodedata.normalize("NFKD", text.casefold())
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'").replace("\u00a0", " ")
    return "\n".join(" ".join(line.split()) for line in text.splitlines())


def _strip_quoted(body: str) -> str:
    """The new part of a (normalised) reply: no '>' lines, nothing from the quote header or signature delimiter on.

    Forwarded messages are kept: people forward their own unanswered request, so it is the request.
    """
    kept: list[str] = []
    for line in body.splitlines():
        if line.lstrip().startswith(">"):
            continue
        if _QUOTE_HEADER.match(line):
            break
        kept.append(line)
    return "\n".join(kept)


def _paragraphs(text: str) -> str:
    """Join hard-wrapped lines so a phrase split across two lines still matches; blank lines stay breaks."""
    return re.sub(r"(?<!\n)\n(?!\n)", " ", text).strip()


def _is_negated(text: str, start: int) -> bool:
    clause = text[max(0, start - 200):start]
    breaks = list(_CLAUSE_BREAK.finditer(clause))
    if breaks:
        clause = clause[breaks[-1].end():]
    window = " ".join(clause.split()[-_NEGATION_WORDS:])
    return bool(_NEGATION.search(window))


def _is_not_a_request(text: str, start: int, end: int) -> bool:
    before = text[max(0, start - 300):start]
    breaks = list(_SENTENCE_BREAK.finditer(before))
    sentence_start = start - len(before) + (breaks[-1].end() if breaks else 0)
    after = _SENTENCE_BREAK.search(text, end)
    sentence_end = after.start() if after else len(text)
    return bool(_NOT_A_REQUEST.search(text, sentence_start, sentence_end))


@dataclass
class _Evidence:
    score: float = 0.0
    specific_score: float = 0.0  # without generic access wording (see _Pattern.generic)
    best: tuple[float, str] = (0.0, "")


def _strongest_rival(winner: RequestKind, evidence: dict[RequestKind, _Evidence]) -> tuple[RequestKind, float]:
    """The other kind with the most evidence against ``winner``.

    Asking for "a copy" in a portable format is still one request: generic access wording does not rival
    portability (but "droit d'accès" or "article 15" does).
    """
    def against(kind: RequestKind) -> float:
        found = evidence[kind]
        generic_ok = winner is RequestKind.PORTABILITY and kind is RequestKind.ACCESS
        return found.specific_score if generic_ok else found.score

    rival = max((kind for kind in evidence if kind is not winner), key=against)
    return rival, against(rival)


def _language(text: str, pattern_votes: dict[Language, float]) -> Language | None:
    counts = dict.fromkeys(_STOPWORDS, 0.0)
    for word in _WORD.findall(text):
        for language, words in _STOPWORDS.items():
            if word in words:
                counts[language] += 1
    for language, votes in pattern_votes.items():
        counts[language] += votes
    (first, first_count), (_, second_count) = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)
    if first_count < _MIN_LANGUAGE_EVIDENCE or first_count < 1.5 * second_count:
        return None
    return first


def _confidence(top: float, runner_up: float) -> float:
    """Grows with the evidence, shrinks with the runner-up; 0.5 at the threshold with no rival."""
    strength = 1 - math.exp(-top * math.log(2) / THRESHOLD)
    return round(strength * (top - runner_up) / top, 3) if top > 0 else 0.0


def _consent_withdrawal(language: Language | None, evidence: dict[RequestKind, _Evidence]) -> Classification:
    """A withdrawal of consent, unless another kind is clearly asked too (then triage: two requests)."""
    asked = [kind for kind, found in evidence.items() if found.specific_score >= THRESHOLD]
    if asked:
        return Classification(None, language, 0.0, f"unsure: withdrawal of consent and {asked[0].value} both asked")
    return Classification(RequestKind.CONSENT_WITHDRAWAL, language, 0.5, "consent_withdrawal: 'retirer/withdraw "
                                                                         "consent'")


def _objection(subject_text: str, body_text: str, language: Language | None,
               evidence: dict[RequestKind, _Evidence]) -> Classification:
    """An objection, unless another kind is clearly asked too (then triage: two requests)."""
    asked = [kind for kind, found in evidence.items() if found.specific_score >= THRESHOLD]
    if asked:
        return Classification(None, language, 0.0, f"unsure: objection and {asked[0].value} both asked")
    marketing = bool(MARKETING.search(subject_text) or MARKETING.search(body_text))
    scope = "marketing" if marketing else "other"
    return Classification(RequestKind.OBJECTION, language, 0.5, f"objection ({scope})", scope=scope)


def _restriction(text: str, language: Language | None) -> Classification:
    """A restriction with the one ground the message states; with none or several, a person reads it (triage)."""
    grounds = [ground for ground, regex in RESTRICTION_GROUNDS.items() if regex.search(text)]
    if len(grounds) != 1:
        stated = "no ground stated" if not grounds else f"grounds {', '.join(grounds)} all named"
        return Classification(None, language, 0.0, f"unsure: restriction of processing ({stated})")
    return Classification(RequestKind.RESTRICTION, language, 0.5, f"restriction (ground {grounds[0]})",
                          ground=grounds[0])


def classify(subject: str, body: str) -> Classification:
    """The request kind and language of an email, or ``kind=None`` when it is not clearly one request."""
    subject_text = _normalise(subject[:MAX_SUBJECT_CHARS].replace("\n", " "))
    body_text = _paragraphs(_strip_quoted(_normalise(body[:MAX_BODY_CHARS])))

    if _REPLY_PREFIX.match(subject_text):
        subject_weight = REPLY_SUBJECT_WEIGHT
    elif _FORWARD_PREFIX.match(subject_text):
        subject_weight = FORWARDED_SUBJECT_WEIGHT
    else:
        subject_weight = SUBJECT_WEIGHT
    while (prefix := _REPLY_PREFIX.match(subject_text) or _FORWARD_PREFIX.match(subject_text)) and prefix.end():
        subject_text = subject_text[prefix.end():]

    evidence = {kind: _Evidence() for kind in PATTERNS}
    language_votes = dict.fromkeys(_STOPWORDS, 0.0)
    ignored: dict[str, None] = {}  # an ordered set: a long body may repeat the same phrase
    segments = (("subject", subject_text, subject_weight), ("body", body_text, 1.0))
    for kind, patterns in PATTERNS.items():
        for pattern in patterns:
            best_weight, best_place = 0.0, ""
            for place, text, segment_weight in segments:
                for match in pattern.regex.finditer(text):
                    if _is_negated(text, match.start()):
                        ignored[f"negated '{pattern.label}'"] = None
                        continue
                    if _is_not_a_request(text, match.start(), match.end()):
                        ignored[f"not a request '{pattern.label}'"] = None
                        continue
                    # Language evidence counts even from a reply subject: it is still the thread's language.
                    if pattern.language is not None:
                        language_votes[pattern.language] += 2
                    if segment_weight > best_weight:
                        best_weight, best_place = segment_weight, place
                    break
            if best_weight == 0:
                continue
            points = pattern.weight * best_weight
            found = evidence[kind]
            found.score += points
            if not pattern.generic:
                found.specific_score += points
            if points > found.best[0]:
                found.best = (points, f"'{pattern.label}' ({best_place})")

    language = _language(f"{subject_text}\n{body_text}", language_votes)
    if not body_text.strip() and not subject_text.strip():
        return Classification(None, language, 0.0, "unsure: empty message")
    if _AUTO_REPLY_SUBJECT.match(subject_text) or _AUTO_REPLY_BODY.search(body_text):
        return Classification(None, language, 0.0, "unsure: automatic reply")

    # Checked on the subject too (even a reply's: "Re: ... désinscription" is still about an opt-out).
    for label, regex in OUT_OF_SCOPE:
        if regex.search(subject_text) or regex.search(body_text):
            if label == DECEASED:
                if OWN_DIRECTIVES.search(subject_text) or OWN_DIRECTIVES.search(body_text):
                    return Classification(None, language, 0.0, "unsure: directives for after their own death "
                                                                "(dsr directives record)")
                return _post_mortem(subject_text, body_text, language)
            if regex is CONSENT_WITHDRAWAL:
                return _consent_withdrawal(language, evidence)
            return Classification(None, language, 0.0, f"unsure: {label}")
    if RESTRICTION.search(subject_text) or RESTRICTION.search(body_text):
        return _restriction(f"{subject_text}\n{body_text}", language)
    if OBJECTION.search(subject_text) or OBJECTION.search(body_text):
        if OPT_OUT_FOOTER.search(body_text):
            return Classification(None, language, 0.0, "unsure: objection or unsubscribe (an opt-out footer: "
                                                        "someone else's mailing?)")
        return _objection(subject_text, body_text, language, evidence)

    ranked = sorted(evidence.items(), key=lambda kv: kv[1].score, reverse=True)
    # The best-scored kind that beats its own rivals: generic access wording may outscore portability yet
    # not rival it (see _strongest_rival), so the runner-up can be the one that qualifies.
    for top_kind, top in ranked:
        rival_kind, rival_score = _strongest_rival(top_kind, evidence)
        if top.score >= THRESHOLD and rival_score < RIVAL_FLOOR and top.score >= MIN_RATIO * rival_score:
            return Classification(top_kind, language, _confidence(top.score, rival_score),
                                  f"{top_kind.value}: {top.best[1]}")
    top_kind, top = ranked[0]
    rival_kind, rival_score = _strongest_rival(top_kind, evidence)
    confidence = _confidence(top.score, rival_score)

    if top.score < THRESHOLD:
        detail = f"; weak {top_kind.value} {top.best[1]}" if top.score > 0 else ""
        extra = f"; ignored {', '.join(ignored)}" if ignored else ""
        return Classification(None, language, confidence, f"unsure: no clear request{detail}{extra}"[:300])
    return Classification(None, language, confidence, f"unsure: {top_kind.value} and {rival_kind.value} both asked")
