from functions.health import app  # noqa: F401
