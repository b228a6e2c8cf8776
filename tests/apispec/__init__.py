"""The vendors' own API descriptions, checked against what really crosses the wire in the connector tests.

:class:`SpecCheck` is ASGI middleware put outermost in front of a sandbox: every request a connector sends and every
answer it gets back is validated with ``openapi-core`` against the vendored descriptions in ``specs/``
(sources and licences in SOURCES.md). What does not fit is a :class:`Violation`, named by a stable
:attr:`~Violation.rule` (vendor, side, operation, status, field, JSON-schema keyword); a rule listed in
:data:`tests.apispec.exceptions.EXCEPTIONS` is excused there, with why. Anything else fails the test that
caused it (:meth:`Tally.assert_clean`), and the session's counts are printed at the end of the run
(tests/connectors/conftest.py).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from jsonschema_path import SchemaPath
from openapi_core.templating.paths.exceptions import PathError
from openapi_core.validation.request.validators import V30RequestBodyValidator, V30RequestParametersValidator
from openapi_core.validation.response.validators import V30ResponseDataValidator
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from werkzeug.datastructures import Headers, ImmutableMultiDict

from sandbox.faults import buffered_body
from tests.apispec.exceptions import EXCEPTIONS

SPECS = Path(__file__).parent / "specs"

HUBSPOT_SPECS = ("contacts.v3.json", "notes.v3.json", "deals.v3.json", "tickets.v3.json", "emails.v3.json",
                 "associations.v4.json")
STRIPE_SPECS = ("spec3.subset.json",)


@dataclass(frozen=True)
class Violation:
    vendor: str
    side: str  # "request" or "response"
    operation: str  # "POST /crm/v3/objects/contacts/search": the spec's path template
    status: int | None  # the response's status (None for a request)
    where: str  # the field, array indices as [] ("results[].properties.email"), or a parameter's name
    keyword: str  # the JSON-schema keyword or openapi-core check that failed ("required", "type", ...)

    @property
    def rule(self) -> str:
        status = "" if self.status is None else f" {self.status}"
        return f"{self.vendor} {self.side} {self.operation}{status} {self.where}: {self.keyword}"


@dataclass
class _Request:
    """What openapi-core reads of a request (its ``Request`` protocol)."""

    host_url: str
    path: str
    method: str
    parameters: Any
    content_type: str
    body: bytes

    @property
    def full_url_pattern(self) -> str:
        return self.host_url + self.path


@dataclass
class _Response:
    data: bytes
    status_code: int
    headers: Headers
    content_type: str


@dataclass
class _Spec:
    name: str
    server: str
    raw: dict[str, Any]
    params: V30RequestParametersValidator
    body: V30RequestBodyValidator
    response: V30ResponseDataValidator


@cache
def _load(vendor: str, name: str) -> _Spec:
    raw = json.loads((SPECS / vendor / name).read_text(encoding="utf-8"))
    _null_in_any_of(raw)
    server = raw["servers"][0]["url"].rstrip("/")
    path = SchemaPath.from_dict(raw)
    # HubSpot describes its error bodies as "*/*", which openapi-core leaves undecoded: they are JSON.
    media: dict[str, Callable[[bytes], Any]] = {"*/*": _json_or_bytes}
    return _Spec(name, server, raw, V30RequestParametersValidator(path, base_url=server),
                 V30RequestBodyValidator(path, base_url=server),
                 V30ResponseDataValidator(path, base_url=server, extra_media_type_deserializers=media))


def _null_in_any_of(node: Any) -> None:
    """Read ``nullable: true`` beside ``anyOf``/``oneOf`` (and no ``type``) as allowing null, in memory.

    Stripe's description (OpenAPI 3.0.0) writes its nullable expandable fields that way (``invoice``: an id, an
    expanded invoice, or null); OpenAPI 3.0.3 later said ``nullable`` means nothing without ``type``, which is
    how openapi-schema-validator reads it, so every null such field (real Stripe sends many) would be reported.
    The vendored file is left as published; the validator gets the author's meaning as an explicit branch.
    """
    if isinstance(node, dict):
        for value in node.values():
            _null_in_any_of(value)
        if node.get("nullable") is True and "type" not in node:
            for key in ("anyOf", "oneOf"):
                if isinstance(node.get(key), list):
                    node[key] = [*node[key], {"type": "object", "nullable": True, "enum": [None]}]
    elif isinstance(node, list):
        for value in node:
            _null_in_any_of(value)


def _json_or_bytes(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body


def _shape(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += "[]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(body)"


def _schema_violations(error: BaseException) -> list[tuple[str, str]]:
    """(field, keyword) for each JSON-schema error under an openapi-core exception."""
    found: list[tuple[str, str]] = []
    cause: BaseException | None = error
    while cause is not None and not hasattr(cause, "schema_errors"):
        cause = cause.__cause__
    for schema_error in getattr(cause, "schema_errors", ()) or ():
        where = _shape(schema_error.absolute_path)
        keyword = str(schema_error.validator)
        if keyword == "required":
            missing = re.match(r"'([^']+)' is a required property", schema_error.message)
            if missing:
                where = f"{where}.{missing.group(1)}" if where != "(body)" else missing.group(1)
        elif keyword == "type" and schema_error.instance is None:
            keyword = "type (null)"
        parameter = getattr(error, "name", None)
        if isinstance(parameter, str):  # a parameter's value: name it
            where = parameter if where == "(body)" else f"{parameter}.{where}"
        found.append((where, keyword))
    if not found:
        name = getattr(error, "name", None) or getattr(getattr(error, "param", None), "name", None)
        found.append((str(name) if name else "(whole)", type(error).__name__))
    return found


class Contract:
    """One vendor's descriptions; finds the operation of a request in the first file that has its path."""

    def __init__(self, vendor: str, files: Sequence[str], aliases: Sequence[tuple[str, str]] = ()) -> None:
        self.vendor = vendor
        self.files = tuple(files)
        self.aliases = tuple(aliases)

    def _specs(self) -> list[_Spec]:
        return [_load(self.vendor, name) for name in self.files]

    def _find(self, method: str, path: str) -> tuple[_Spec, str, str] | None:
        """The description holding the operation, its path template, and the path as written there."""
        spellings = [path] + [path.replace(name, written, 1) for name, written in self.aliases
                              if path.startswith(name)]
        for spec in self._specs():
            for spelling in spellings:
                request = _Request(spec.server, spelling, method.lower(), _parameters([]), "", b"")
                try:
                    found = spec.params._find_path(request)
                except PathError:
                    continue
                return spec, found[0].parts[-1], spelling
        return None

    def check(self, method: str, path: str, query: str, headers: Headers, body: bytes,
              status: int | None = None, answer_headers: Headers | None = None,
              answer: bytes | None = None) -> tuple[list[Violation], bool]:
        """Violations of the request (and of its answer when ``status`` is given); and whether an
        answer was checked."""
        located = self._find(method, path)
        if located is None:
            return [Violation(self.vendor, "request", f"{method} {path}", None, "(path)",
                              "operation not in the vendored description")], False
        spec, template, path = located
        operation = f"{method} {template}"
        request = _Request(spec.server, path, method.lower(), _parameters(parse_qsl(query, keep_blank_values=True),
                                                                        headers),
                           headers.get("content-type", ""), body)
        pairs = parse_qsl(query, keep_blank_values=True)
        found: list[tuple[str, str]] = []
        declared = {p.get("name") for p in [*spec.raw["paths"][template].get("parameters", []),
                                            *spec.raw["paths"][template][method.lower()].get("parameters", [])]
                    if p.get("in") == "query"}
        # openapi-core ignores query parameters the operation does not declare; a vendor may not.
        found += [(name, "parameter not in the description")
                  for name in dict.fromkeys(k.split("[", 1)[0] for k, _ in pairs) if name not in declared]
        for error in [*spec.params.iter_errors(request), *spec.body.iter_errors(request)]:
            if type(error).__name__ == "MissingRequestBody":
                continue  # an optional body not sent (Stripe's GET and DELETE)
            if _deserialize_error(error):
                # openapi-core cannot read Stripe's bracketed ``a[b]=c`` (deepObject) parameters and form
                # bodies: decode them here and validate the result against the same schema.
                found += _bracketed_violations(spec.raw, template, method, error, pairs, body)
            else:
                found += _schema_violations(error)
        violations = [Violation(self.vendor, "request", operation, None, where, keyword)
                      for where, keyword in dict.fromkeys(found)]
        if status is None or answer is None:
            return violations, False
        response = _Response(answer, status, answer_headers or Headers(),
                             (answer_headers or Headers()).get("content-type", ""))
        request.parameters = _parameters(parse_qsl(query, keep_blank_values=True), headers)
        found = [pair for error in spec.response.iter_errors(request, response)
                 if not (type(error).__name__ == "MissingData" and not answer
                         and _no_content(spec.raw, template, method, status))
                 for pair in _schema_violations(error)]
        violations += [Violation(self.vendor, "response", operation, status, where, keyword)
                       for where, keyword in dict.fromkeys(found)]
        return violations, True


def _no_content(raw: dict[str, Any], template: str, method: str, status: int) -> bool:
    """The description's answer for ``status`` has no body (``"content": {}``, as HubSpot's 204s)."""
    responses = raw["paths"][template][method.lower()].get("responses", {})
    return responses.get(str(status), {}).get("content", None) == {}


def _deserialize_error(error: BaseException) -> bool:
    cause: BaseException | None = error
    while cause is not None:
        if type(cause).__name__ == "DeserializeError":
            return True
        cause = cause.__cause__
    return False


def _nest(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``a[b][0]=c`` pairs (Stripe's encoding of nested parameters) as ``{"a": {"b": ["c"]}}``."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        names = [key.split("[", 1)[0], *re.findall(r"\[([^\]]*)\]", key)]
        node: Any = root
        for here, next_name in zip(names, [*names[1:], None], strict=True):
            if next_name is None:
                if isinstance(node, list):
                    node.append(value)
                else:
                    node[here] = value
            else:
                child_is_list = next_name == "" or next_name.isdigit()
                if isinstance(node, list):
                    if here.isdigit() and int(here) < len(node):
                        node = node[int(here)]
                        continue
                    node.append([] if child_is_list else {})
                    node = node[-1]
                else:
                    node = node.setdefault(here, [] if child_is_list else {})
    return root


def _bracketed_violations(raw: dict[str, Any], template: str, method: str, error: BaseException,
                          pairs: list[tuple[str, str]], body: bytes) -> list[tuple[str, str]]:
    operation = raw["paths"][template][method.lower()]
    name = getattr(error, "name", None)
    if name is not None:  # a query parameter
        mine = [(k, v) for k, v in pairs if k == name or k.startswith(name + "[")]
        if not mine:
            return []  # not sent: openapi-core stumbles on absent deepObject parameters
        [param] = [p for p in operation.get("parameters", []) if p["name"] == name]
        return [(f"{name}.{where}" if where != "(body)" else name, keyword)
                for where, keyword in _lenient(param["schema"], _nest(mine)[name], raw)]
    schema = operation["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    return _lenient(schema, _nest(parse_qsl(body.decode("utf-8"), keep_blank_values=True)), raw)


def _coercible(error: Any) -> bool:
    """A form value (always a string) where the schema wants a number or a boolean it spells correctly."""
    if error.validator in ("anyOf", "oneOf"):
        branches: dict[Any, list[Any]] = {}
        for sub in error.context or ():
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        return any(all(_coercible(sub) for sub in subs) for subs in branches.values())
    if error.validator != "type" or not isinstance(error.instance, str):
        return False
    wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
    text = error.instance
    return (("integer" in wanted and re.fullmatch(r"-?\d+", text) is not None)
            or ("number" in wanted and re.fullmatch(r"-?\d+(\.\d+)?", text) is not None)
            or ("boolean" in wanted and text in ("true", "false")))


def _lenient(schema: dict[str, Any], value: Any, raw: dict[str, Any]) -> list[tuple[str, str]]:
    from openapi_schema_validator import OAS30Validator

    validator = OAS30Validator({"allOf": [schema], "components": raw.get("components", {})})
    found = []
    for error in validator.iter_errors(value):
        if _coercible(error):
            continue
        where = _shape(error.absolute_path)
        if error.validator == "required":
            missing = re.match(r"'([^']+)' is a required property", error.message)
            if missing:
                where = f"{where}.{missing.group(1)}" if where != "(body)" else missing.group(1)
        found.append((where, str(error.validator)))
    return found


def _parameters(query: list[tuple[str, str]], headers: Headers | None = None) -> Any:
    from openapi_core.datatypes import RequestParameters

    return RequestParameters(query=ImmutableMultiDict(query), header=headers or Headers(),
                             cookie=ImmutableMultiDict(), path={})


def excuse(rule: str) -> str | None:
    """Why ``rule`` is excused, or None when it is a violation to fail on."""
    for pattern, why in EXCEPTIONS.items():
        if why and re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")), rule):
            return pattern
    return None


@dataclass
class Tally:
    """What one checked server saw; the session's totals add up every tally (:data:`SESSION`).

    Exchanges are kept as they happen and validated when first asked about (``settle``): validating costs
    milliseconds a call, which inside the server would change the timing that rate-limit tests measure."""

    vendor: str
    session: bool = True  # False for the validator's own tests, whose planted faults are not the session's
    _requests: int = 0
    _responses: int = 0
    _violations: list[Violation] = field(default_factory=list)
    _pending: list[Callable[[], tuple[list[Violation], bool]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.session:
            SESSION.tallies.append(self)

    def keep(self, check: Callable[[], tuple[list[Violation], bool]]) -> None:
        self._pending.append(check)

    def settle(self) -> None:
        while self._pending:
            violations, answered = self._pending.pop(0)()
            self._requests += 1
            self._responses += answered
            self._violations.extend(violations)
            if self.session:
                SESSION.add(self.vendor, 1, int(answered), violations)

    @property
    def requests(self) -> int:
        self.settle()
        return self._requests

    @property
    def responses(self) -> int:
        self.settle()
        return self._responses

    @property
    def violations(self) -> list[Violation]:
        self.settle()
        return self._violations

    def unexcused(self, since: int = 0) -> list[Violation]:
        return [v for v in self.violations[since:] if excuse(v.rule) is None]

    def assert_clean(self, since: int = 0) -> None:
        """Fail the calling test on any violation (from the ``since``-th on) that tests/apispec/exceptions.py
        does not excuse."""
        bad = sorted({v.rule for v in self.unexcused(since)})
        assert not bad, (f"{len(bad)} new violation(s) of the {self.vendor} API description "
                         "(fix the sandbox or connector, or justify it in tests/apispec/exceptions.py):\n  "
                         + "\n  ".join(bad))


@dataclass
class Session:
    """Every check of the test session, for the summary line and the per-rule counts."""

    requests: Counter[str] = field(default_factory=Counter)
    responses: Counter[str] = field(default_factory=Counter)
    rules: Counter[str] = field(default_factory=Counter)
    tallies: list[Tally] = field(default_factory=list)

    def add(self, vendor: str, requests: int, responses: int, violations: Iterable[Violation]) -> None:
        self.requests[vendor] += requests
        self.responses[vendor] += responses
        for violation in violations:
            self.rules[violation.rule] += 1

    def summary(self) -> list[str]:
        for tally in self.tallies:
            tally.settle()
        lines = []
        for vendor in sorted(self.requests):
            mine = {rule: n for rule, n in self.rules.items() if rule.startswith(vendor + " ")}
            excused = {rule: n for rule, n in mine.items() if excuse(rule) is not None}
            new = {rule: n for rule, n in mine.items() if excuse(rule) is None}
            lines.append(
                f"{vendor}: {self.requests[vendor]} requests and {self.responses[vendor]} responses checked "
                f"against the vendor's OpenAPI description; {sum(new.values())} violation(s) of {len(new)} "
                f"new rule(s), {sum(excused.values())} excused by {len({excuse(r) for r in excused})} "
                f"documented exception(s)")
            lines += [f"  NEW {n:>5} x {rule}" for rule, n in sorted(new.items())]
        return lines


SESSION = Session()


class SpecCheck:
    """ASGI middleware validating every request and, once it is complete, its answer against ``contract``.
    A connection dropped or an answer lost on purpose (sandbox faults) leaves the answer unchecked."""

    def __init__(self, app: ASGIApp, contract: Contract, tally: Tally | None = None, *,
                 answers: bool = True, requests: bool = True) -> None:
        self.app = app
        self.contract = contract
        self.tally = tally or Tally(contract.vendor)
        self.answers = answers  # False in front of a test's scripted stand-in: its answers are not a sandbox's
        self.requests = requests  # False where a test sends malformed requests on purpose (the sandbox's own)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            replay, body = await buffered_body(receive)
        except ClientDisconnect:
            return  # the client left before its request arrived whole: the sandbox never sees it
        status: int | None = None
        answer_headers = Headers()
        answer: list[bytes] = []
        complete = False

        async def watching(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for key, value in message.get("headers", []):
                    answer_headers.add(key.decode("latin-1"), value.decode("latin-1"))
            elif message["type"] == "http.response.body":
                answer.append(message.get("body", b""))
                complete = not message.get("more_body", False)
            await send(message)

        request_headers = Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]])
        args = (scope["method"], scope["path"], scope.get("query_string", b"").decode("latin-1"),
                request_headers, body)
        try:
            await self.app(scope, replay, watching)
        except BaseException:
            self.tally.keep(lambda: self._kept(self.contract.check(*args)))
            raise
        if self.answers and complete and status is not None and _announced_whole(answer_headers, answer):
            whole = b"".join(answer)
            self.tally.keep(lambda: self._kept(self.contract.check(*args, status, answer_headers, whole)))
        else:
            self.tally.keep(lambda: self._kept(self.contract.check(*args)))

    def _kept(self, checked: tuple[list[Violation], bool]) -> tuple[list[Violation], bool]:
        violations, answered = checked
        return (violations if self.requests else [v for v in violations if v.side != "request"]), answered


def _announced_whole(headers: Headers, body: list[bytes]) -> bool:
    length = headers.get("content-length")
    return length is None or not length.isdigit() or int(length) == sum(len(b) for b in body)


HUBSPOT_ALIASES = (("/crm/v3/objects/deals/", "/crm/v3/objects/0-3/"),)
"""HubSpot takes an object type by name or by id (deals are ``0-3``); its deals description is written with the
id, the connector uses the name."""


def hubspot_contract() -> Contract:
    return Contract("hubspot", HUBSPOT_SPECS, HUBSPOT_ALIASES)


def stripe_contract() -> Contract:
    return Contract("stripe", STRIPE_SPECS)


__all__ = ["SESSION", "Contract", "SpecCheck", "Tally", "Violation", "excuse",
           "hubspot_contract", "stripe_contract"]
