"""The service: the HTTPS Encoding API, authentication, tenants, the job service, the queue,
the job store and its migrations; `cluster/` dispatches to Celery workers.

Nothing in the media engine imports from here (a test reads the imports)."""
