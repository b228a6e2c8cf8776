"""One exception tree for the whole engine, in the manner of httpx's ``_exceptions.py``.

Catch :class:`DsrError` for "anything the engine raised on purpose", a family for one kind of trouble, or the
concrete class for one case. Every message says what went wrong and what to do about it, and never carries
personal data (they reach logs, Temporal failures and the operator's terminal). The concrete classes live
beside the code that raises them; where an older one was also a built-in error (``ValueError``, ``OSError``,
``LookupError``...) it still is, so nothing that catches the built-in changed.

::

    DsrError
    ├── ConfigurationError             fix a setting or a file, then restart
    │   ├── ConfigError                    dsr.config.settings: an environment variable or secrets.env
    │   ├── ConfigFileError                connectors.config: the connectors of dsr.toml
    │   ├── ProfileError                   dsr.config.profile: the [controller] table of dsr.toml
    │   ├── IncompleteProfileError         dsr.mail.replies: an Art. 15(1) item the profile lacks
    │   ├── CodecTokenError                dsr.runtime.codec_server: the codec token file
    │   ├── StackError                     dsr.runtime.stack: `dsr up` cannot start (ports, Temporal CLI)
    │   └── DemoError                      sandbox.demo: the demo sandboxes cannot start
    ├── InvalidInputError              what a person or a client sent is refused (CLI: one line; HTTP: a 4xx)
    │   ├── UserError                      dsr.cli: a verb's arguments
    │   ├── AttachmentLimitError           dsr.store.attachments: too many or too large files
    │   ├── InvalidLink                    dsr.store.links: a forged, altered or expired link
    │   └── BodyTooLarge                   dsr.web.body: an HTTP body over its limit (413)
    ├── NotFoundError                  no such thing (yet, or any more)
    │   ├── UnknownRequestError            dsr.store.ledger: no request with this reference
    │   └── ObjectNotFound                 dsr.store.objects: no object at this key
    ├── ConflictError                  the thing exists already, or its state refuses the operation
    │   └── ObjectExists                   dsr.store.objects: a conditional write found the key taken
    ├── StoreError                     the ledger's database or the object storage failed
    │   ├── StorageError                   dsr.store.objects: the object storage is unreachable or refuses
    │   └── LedgerUnavailableError         dsr.store.ledger: the ledger's database is unreachable
    ├── CryptoError                    keys, and data sealed with them
    │   └── KeyRingError                   dsr.store.crypto: the key ring cannot be loaded or used
    │       ├── UnknownKeyError                data sealed with a key the ring no longer has
    │       └── DecryptionError                data that does not open (altered, or bound elsewhere)
    │           ├── UnencryptedPayloadError        a plain payload where only sealed ones are accepted
    │           ├── ForeignPayloadError            a payload sealed for another workflow
    │           └── BundleError                    dsr.mail.bundle: an export bundle that does not open
    └── ConnectorError                 a system holding personal data failed (connectors/)
        ├── TransientConnectorError        worth retrying: 429, 5xx, timeouts (``retry_after``)
        └── PermanentConnectorError        needs a person: bad credentials, unknown configuration

The errors of the rooms above the core (intake's ``SubmissionError``, ``RateLimited``, ``RequestClosed``,
``IntakeUnavailable``, ``MailboxError``, ``MessageTooComplex``) join the tree from their own modules.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ConflictError",
    "ConnectorError",
    "CryptoError",
    "DsrError",
    "InvalidInputError",
    "NotFoundError",
    "PermanentConnectorError",
    "StoreError",
    "TransientConnectorError",
]


class DsrError(Exception):
    """The root: every error the engine raises on purpose. Its message is for an operator (no personal data)."""


class ConfigurationError(DsrError):
    """The deployment's configuration is wrong or incomplete (a setting, dsr.toml, a key or token file): the message
    names the setting or file and what it must be; fix it and start again. Retrying changes nothing."""


class InvalidInputError(DsrError):
    """What a person or a client sent is refused; the message says which value and what is expected. The CLI prints
    it as one ``error:`` line, the HTTP apps answer a 4xx; nothing was created."""


class NotFoundError(DsrError):
    """The thing asked for does not exist (a reference mistyped, or deleted since): the message names it."""


class ConflictError(DsrError):
    """The thing exists already, or is in a state that refuses the operation; the message says which state."""


class StoreError(DsrError):
    """The ledger's database or the object storage failed or refused: the message names the store (never a
    credential); check that it is reachable and that this process may write to it. Usually worth retrying."""


class UnavailableError(DsrError):
    """A service the engine needs (Temporal, the mail server) cannot be reached now; nothing was done. Retry later:
    the HTTP apps answer 503, the mailbox tries again at its next poll."""


class CryptoError(DsrError):
    """Keys, and data sealed with them: a key ring that cannot be loaded, or data that does not open with it."""


class ConnectorError(DsrError):
    """Base of connector errors. The message is shown to operators: no personal data in it."""


class TransientConnectorError(ConnectorError):
    """Worth retrying (429, 5xx, timeouts, dropped connections). ``retry_after`` honours Retry-After."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentConnectorError(ConnectorError):
    """Retrying will not help until a person acts (bad credentials, unknown configuration).

    The request moves to ``needs_attention`` and waits for an operator's ``retry``.
    """
