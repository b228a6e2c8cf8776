"""The domain: requests, subjects, deadlines, policies. Pure: no I/O, no Temporal, nothing else of the project."""
