from functions.jobs import app  # noqa: F401
