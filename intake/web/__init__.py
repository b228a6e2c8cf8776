"""The intake's web app: ``app`` assembles the FastAPI application from the routers of ``api`` (``/api`` and
the support-desk webhooks), ``form`` (the public form), ``verify`` (identity confirmation) and ``exports``
(bundle downloads); ``pages`` renders every HTML page from the Jinja templates of ``templates/pages/``."""
