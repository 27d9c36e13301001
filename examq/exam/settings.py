"""Settings of exam processing and of the jobs API.

They are fields of ``examq.config.Settings`` (``EXAMQ_STORAGE_DIR``,
``EXAMQ_REPORTS_DIR``, ``EXAMQ_REPORTS_BUCKET``, ``EXAMQ_REPORT_LINK_SECONDS``,
``EXAMQ_MAX_INPUT_BYTES``, ``SUPABASE_ANON_KEY``, ``SUPABASE_JWT_SECRET``,
``EXAMQ_SUBMIT_PASS_SECONDS``), so that every command and function validates them
when it loads its settings at start, and a bad value stops it naming the variable
rather than failing jobs later. The names here are kept for the exam code.
"""

from __future__ import annotations

from examq.config import Settings, load_settings

ExamSettings = Settings


def load_exam_settings() -> ExamSettings:
    """Read and validate the settings; raises ConfigError naming the variable at fault."""
    return load_settings()
