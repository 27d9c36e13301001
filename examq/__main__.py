"""Allow ``python -m examq``."""

from examq.cli import main

main()
