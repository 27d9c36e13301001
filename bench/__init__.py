"""Benchmarks: examq against PgQueuer, Procrastinate and a plain-SQL queue; a soak test."""
