"""examq: a background job queue inside Supabase Postgres, driven by serverless functions."""

__version__ = "0.1.0"
