"""The one place where a violation of a vendor's API description is accepted, each rule with why.

Keys are :attr:`tests.apispec.Violation.rule` patterns (``*`` matches anything, nothing else is special); values say
why the violation is accepted. Everything not listed here fails the test that caused it.
"""

from __future__ import annotations

EXCEPTIONS: dict[str, str] = {
    # --- HubSpot ------------------------------------------------------------------------------------
    "hubspot request POST /crm/v3/objects/contacts/search sorts[]: type": (
        "The description types each sort as a string; HubSpot's search guide and its own clients send "
        "{propertyName, direction} objects, and a string sort is ignored (HubSpot/hubspot-api-ruby#257, "
        "hubspot-api-nodejs#559, acknowledged by HubSpot). The connector sends the object the API honours."),
}
