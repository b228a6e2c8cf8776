"""Restrictions (Art. 18) whose ground ends with another request of the same person: telling them so.

A restriction on ground (a) lasts while the accuracy of the data is verified, one on ground (d) while an objection
is weighed. When a rectification of the same person is answered, or their objection decided, the request's
workflow calls ``end_restriction_grounds``: the ledger names the person's restriction requests (blind index, no
address), and each one's ``RestrictionInForce`` gets the ``ground_ended`` signal; one on another ground, or no
longer running, ignores it or is not there.
"""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.service import RPCError, RPCStatusCode

from dsr.domain.model import GroundEnd, GroundEnded, RequestKind, restriction_id
from dsr.store.ledger import Ledger

GROUND_ENDED_SIGNAL = "ground_ended"


class RestrictionActivities:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    @activity.defn(name="end_restriction_grounds")
    async def end_restriction_grounds(self, end: GroundEnd) -> int:
        """Signal every restriction of the same person that its ground may have ended; answers how many were
        running. Idempotent: a restriction already lifting ignores a second signal."""
        ids = await asyncio.to_thread(self._ledger.of_same_subject, end.request_id, [RequestKind.RESTRICTION])
        told = 0
        for request_id in ids:
            handle = activity.client().get_workflow_handle(restriction_id(request_id))
            try:
                await handle.signal(GROUND_ENDED_SIGNAL, GroundEnded(ground=end.ground, by_request=end.request_id))
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:  # not in force (not yet answered, or lifted): nothing
                    continue
                raise
            told += 1
        return told
