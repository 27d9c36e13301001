from functions.cron import app  # noqa: F401
