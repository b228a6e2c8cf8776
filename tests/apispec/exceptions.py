"""The one place where a violation of a vendor's API description is accepted, each rule with why.

Keys are :attr:`tests.apispec.Violation.rule` patterns (``*`` matches anything, nothing else is special); values say
why the violation is accepted. Everything not listed here fails the test that caused it.
"""

from __future__ import annotations

COMMUNICATION_PREFERENCES = (
    "HubSpot's communication-preferences v3 description (HubSpot-public-api-spec-collection, PublicApiSpecs/"
    "Communication Preferences/Subscriptions/Rollouts/147906/v3/subscriptions.json) is not among the vendored files "
    "(shared/vendor-specs holds the CRM ones); the sandbox follows its schemas (SubscriptionDefinition, "
    "PublicSubscriptionStatus, PublicUpdateSubscriptionStatusRequest, Error), checked by hand against it and "
    "HubSpot's API reference. To be vendored with the other HubSpot files once their licence is confirmed "
    "(SOURCES.md); then these lines go.")


EXCEPTIONS: dict[str, str] = {
    # --- HubSpot ------------------------------------------------------------------------------------
    "hubspot request GET /communication-preferences/v3/definitions (path): operation not in the vendored "
    "description": COMMUNICATION_PREFERENCES,
    "hubspot request GET /communication-preferences/v3/status/email/* (path): operation not in the vendored "
    "description": COMMUNICATION_PREFERENCES,
    "hubspot request POST /communication-preferences/v3/unsubscribe (path): operation not in the vendored "
    "description": COMMUNICATION_PREFERENCES,
    "hubspot request POST /crm/v3/objects/contacts/search sorts[]: type": (
        "The description types each sort as a string; HubSpot's search guide and its own clients send "
        "{propertyName, direction} objects, and a string sort is ignored (HubSpot/hubspot-api-ruby#257, "
        "hubspot-api-nodejs#559, acknowledged by HubSpot). The connector sends the object the API honours."),
}
