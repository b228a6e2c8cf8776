"""The typed contract between the workflows and the activities they call: references, options, failure types.

Activities are called by reference (``workflow.execute_activity_method(LedgerActivities.record_event, ...)``),
never by a name string, so an activity's name, input and result type cannot drift apart from its callers: mypy
sees a renamed activity or a changed signature. The references are imported through
``imports_passed_through``: the activity modules (database, SMTP, HTTP clients) are loaded once by the worker,
never inside the workflow sandbox, and no workflow code runs them. The workflows import this module passed through
too: it holds references, options and names, no workflow code, so it is executed once per worker, not again in
every workflow run's sandbox (the child workflows' classes, likewise: ``workflows/children.py``).

Options are ``workflow.ActivityConfig`` typed dicts, spread into each call (``**LEDGER``). Failure types
(``ApplicationError.type``) are defined where they are raised, in the activity modules, and gathered here so
that workflow code matches on one name each. Stages are :class:`dsr.domain.model.Stage`.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.connectors import HEALTH_SIGNAL, PERMANENT_ERROR, PROGRESSED, ConnectorActivities
    from activities.deadlines import deadlines_resumed, local_instant
    from activities.intake import SUBMISSION_ERROR, IntakeActivities
    from activities.ledger import LedgerActivities
    from activities.notices import NOTICE_INVALID_ADDRESS, NOTICE_REJECTED, NoticeActivities
    from activities.outside import OutsideActivities
    from activities.replies import INCOMPLETE_PROFILE, REPLY_INVALID, ReplyActivities
    from activities.restrictions import GROUND_ENDED_SIGNAL, RestrictionActivities
    from activities.storage import StorageActivities
    from activities.subjects import SubjectActivities
    from dsr.domain.model import SUBJECT_TURN_SIGNAL

__all__ = [
    "CHECK",
    "CONNECTOR",
    "DEADLINES",
    "GROUND_ENDED_SIGNAL",
    "HEALTH_SIGNAL",
    "HOLDER_CHECK_EVERY",
    "IDENTITY_NOT_ALLOWED",
    "INCOMPLETE_PROFILE",
    "LEDGER",
    "LEDGER_LOCAL",
    "NOTICE",
    "NOTICE_FIRST_TRY",
    "NOTICE_INVALID_ADDRESS",
    "NOTICE_REJECTED",
    "PERMANENT_ERROR",
    "PLAN",
    "PROGRESSED",
    "REPLY",
    "REPLY_FIRST_TRY",
    "REPLY_HELD_TYPES",
    "REPLY_INVALID",
    "REPLY_UNDELIVERABLE_TYPES",
    "REQUEST_REJECTED",
    "STEP_HEARTBEAT",
    "STORAGE",
    "SUBJECT_TURN_SIGNAL",
    "SUBMISSION_ERROR",
    "SUBMIT",
    "TURN_ASK",
    "TURN_ASK_LOCAL",
    "ConnectorActivities",
    "IntakeActivities",
    "LedgerActivities",
    "NoticeActivities",
    "OutsideActivities",
    "ReplyActivities",
    "RestrictionActivities",
    "StorageActivities",
    "SubjectActivities",
    "deadlines_resumed",
    "local_instant",
    "summarised",
]

# --- failure types -------------------------------------------------------------------------------------

REQUEST_REJECTED = "RequestRejected"
"""An update the request's state does not allow (raised by the workflows' validators)."""
IDENTITY_NOT_ALLOWED = "IdentityNotAllowed"
"""A confirmation of identity whose method or proof the request's policy does not allow; ``/verify`` answers it
exactly like a wrong code (no oracle)."""
REPLY_HELD_TYPES = (INCOMPLETE_PROFILE, REPLY_INVALID)
"""Errors of ``send_reply`` only an operator can fix: no blind retries, the request asks for attention."""
REPLY_UNDELIVERABLE_TYPES = (NOTICE_REJECTED, NOTICE_INVALID_ADDRESS)
"""The mail server refused the address for good: recorded, and the request goes on."""

# --- options ------------------------------------------------------------------------------------------------

_PATIENT = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
"""Ledger, storage and turn steps: a lost worker's step runs again within seconds, and never more than 30 s
after the step's own timeout however often it failed before (a database outage: a connection try every 30 s)."""

LEDGER = workflow.ActivityConfig(
    # One row in the database: a worker lost mid-write is noticed (and the write retried) within seconds.
    start_to_close_timeout=timedelta(seconds=10),
    # The ledger is the proof: keep trying (with backoff) rather than lose an event.
    retry_policy=_PATIENT,
)
_LOCAL_TRIES = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30),
                           maximum_attempts=5)
"""A local activity's tries, five in 15 s, before its step goes to the server as an activity (``LEDGER``,
``TURN_ASK``): retried there with ``_PATIENT``'s backoff and shown pending in the UI. Retried for ever as a local
activity, a ledger the worker cannot reach would keep the workflow task open (renewed every ~8 s, three history events
each time, nothing pending in the UI) until the history's limit ends the run (~38 h). Bounded by attempts, not by
``schedule_to_close_timeout``, which the SDK (1.35) did not enforce on a local activity's retries (measured: still
retrying after 120 s against a 10 s bound, on the dev server and the test server). A local activity that gives up
raises an ``ApplicationError`` (its last exception) or an ``ActivityError`` (its last timeout): both hand the step on.
Only for steps whose effects are keyed by their input, never by the activity's id (the request's row by its id, a
batch by the key the request gives it, the line by request and round), so that the local tries and the activity
write once between them."""
LEDGER_LOCAL = workflow.LocalActivityConfig(start_to_close_timeout=timedelta(seconds=10), retry_policy=_LOCAL_TRIES)
"""The request's row, in its first workflow task, and its last ledger batches once the run is ending (``closed``,
``aftercare_started``, when no give-back of the turn carries them; what a deadline notice or an update notes after the
close); either, after five tries, as an activity (``LEDGER``). Only there: the batches between them stay activities,
written beside the request's next steps (measured with bench/throughput.py: local ones in the middle of a request cost
more throughput than they saved), or go with the turn's ask or give-back (``TURN_ASK_LOCAL``)."""
STORAGE = workflow.ActivityConfig(
    # Deleting a request's objects (exports, attachments) may list and delete many; still short.
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=_PATIENT,
)
PLAN = workflow.LocalActivityConfig(start_to_close_timeout=timedelta(seconds=10))
"""The fan-out's plan (which connectors a kind takes): the worker's configuration, read in a local activity, so it
costs no round trip to the server before the connectors start."""
TURN_ASK = workflow.ActivityConfig(start_to_close_timeout=timedelta(seconds=10), retry_policy=_PATIENT)
"""Asking for the person's turn and giving it back: a transaction on the person's line, then its signals."""
TURN_ASK_LOCAL = workflow.LocalActivityConfig(start_to_close_timeout=timedelta(seconds=10), retry_policy=_LOCAL_TRIES)
"""The request's ask and give-back, in local activities: a transaction of a millisecond or two on the person's line,
and one for the ledger events noted before it (and, only when someone of the person holds the turn, a look at whether
it still runs; after a give-back, the signal to the next), answered
within the workflow task that asks, so that a turn granted at once starts the connectors in that same task, with no
round trip to the server in between. After five tries, an activity (``TURN_ASK``)."""
HOLDER_CHECK_EVERY = timedelta(hours=1)
"""How often a request waiting for its person's turn checks that the holder still runs (a workflow terminated by
hand never gives the turn back; the check takes it out of the line)."""
CHECK = workflow.ActivityConfig(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=5)),
)


def summarised(config: workflow.ActivityConfig, summary: str, *,
               heartbeat_timeout: timedelta | None = None) -> workflow.ActivityConfig:
    """``config`` for one call: with the summary the UI shows for it (no personal data: summaries are stored in
    plaintext), and the heartbeat timeout a request's policy sets, if any."""
    options: workflow.ActivityConfig = {**config, "summary": summary}
    if heartbeat_timeout is not None:
        options["heartbeat_timeout"] = heartbeat_timeout
    return options


DEADLINES = workflow.LocalActivityConfig(start_to_close_timeout=timedelta(seconds=10))
"""Deadline arithmetic: a local activity, so new holiday data never changes a replayed history."""

STEP_HEARTBEAT = timedelta(seconds=15)
"""Heartbeat timeout of the mail steps: a worker lost while sending is noticed, and the step retried on
another worker, within this long (the activities beat every 2 s; the SDK sends at most one per 0.8 x 15 = 12 s,
which leaves 3 s for a busy machine)."""

_NOTICE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    maximum_interval=timedelta(minutes=10),
    non_retryable_error_types=[NOTICE_REJECTED],
)
NOTICE = workflow.ActivityConfig(
    # SMTP has its own per-command timeout (``smtp.timeout_seconds``); liveness is the heartbeat's job.
    start_to_close_timeout=timedelta(minutes=5),
    heartbeat_timeout=STEP_HEARTBEAT,
    retry_policy=_NOTICE_RETRY,
)
NOTICE_FIRST_TRY = workflow.ActivityConfig(
    # One try, so that a notice the SMTP server does not take at once shows as pending (status, dashboard)
    # while NOTICE retries it under the same key (one Message-ID, sent at most once per sent-log).
    start_to_close_timeout=timedelta(minutes=5),
    heartbeat_timeout=STEP_HEARTBEAT,
    retry_policy=dataclasses.replace(_NOTICE_RETRY, maximum_attempts=1),
)

_REPLY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=[*REPLY_UNDELIVERABLE_TYPES, *REPLY_HELD_TYPES],
)
REPLY_FIRST_TRY = workflow.ActivityConfig(
    # Building a 10,000-order bundle takes seconds to minutes; the activity heartbeats all along, so a lost
    # worker costs STEP_HEARTBEAT, not this timeout. One try, so that a reply the SMTP server does not take at once
    # (or whose worker was lost) shows as pending mail (DsrMailPending) while REPLY retries it under the same key
    # (``ReplyInput.key``: one Message-ID). What only an operator can fix (REPLY_HELD_TYPES) is not retried
    # blindly: the request asks them.
    start_to_close_timeout=timedelta(minutes=30),
    heartbeat_timeout=STEP_HEARTBEAT,
    retry_policy=dataclasses.replace(_REPLY_RETRY, maximum_attempts=1),
)
REPLY = workflow.ActivityConfig(
    # The reply after a failed first try. The time a request stays in `replying` after its worker dies is
    # bounded by construction: the server sees the worker lost within STEP_HEARTBEAT (15 s) and schedules the
    # next attempt after the backoff, at most 30 s (_REPLY_RETRY); a live worker polls it at once. The workflow
    # task the dead worker held comes back within 10 s (the SDK's sticky schedule-to-start and the workflow task
    # timeout, both 10 s). The ledger writes around the reply (`replying`, `reply_sent`, `closed`) and an
    # erasure's deletion of earlier exports cost at most their start-to-close (10 s, 30 s) plus 30 s of backoff
    # (_PATIENT). So one death at the worst moment costs at most 10 + max(15 + 30, 10 + 30, 30 + 30) = 70 s of
    # `replying`, under the 120 s rule; a first-try death (the common case) costs 15 s + 10 s.
    start_to_close_timeout=timedelta(minutes=30),
    heartbeat_timeout=STEP_HEARTBEAT,
    retry_policy=_REPLY_RETRY,
)

CONNECTOR = workflow.ActivityConfig(
    # Long exports (10,000 orders) page for minutes; liveness is the heartbeat's job (the policy's
    # ``connector_heartbeat_seconds``, given per call), not this one's.
    start_to_close_timeout=timedelta(hours=2),
    # Transient errors (429, 5xx) retry with backoff for about a day, then an operator is asked.
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=5),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=30),
        maximum_attempts=50,
        non_retryable_error_types=[PERMANENT_ERROR],
    ),
)

SUBMIT = workflow.ActivityConfig(
    # The operator waits on the update: a few quick retries, then a clear refusal they can act on.
    start_to_close_timeout=timedelta(minutes=1),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=1),
        maximum_interval=timedelta(seconds=10),
        maximum_attempts=6,
        non_retryable_error_types=[SUBMISSION_ERROR],
    ),
)
