"""What reaches the subject: the final replies, the export bundle behind the download link, and the local
outbox that stands in for an SMTP server. Renders with :mod:`templates`."""
