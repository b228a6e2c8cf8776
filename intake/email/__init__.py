"""Email intake, in its parts: ``settings`` (what the poller is told and tells back), ``imap`` (the protocol),
``mimescan`` and ``mime`` (reading a message), ``authresults`` (our mail server's verdicts on the sender),
``classify`` (kind and language), ``inbox`` (the ``inbound_messages`` table), ``taking_in`` (the
exactly-once state machine) and ``poller`` (:class:`~intake.email.poller.Mailbox`, which runs them)."""
