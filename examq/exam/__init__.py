"""Exam processing: one exam model, importers for the formats teachers export, scoring
by each format's rules, item analysis, and the report.

The importers (``gift``, ``moodle_xml``, ``qti``, ``keys``) all produce an
``examq.exam.model.Exam``; ``scoring`` grades a responses CSV against it;
``analysis`` turns the scores into item statistics; ``report`` renders them as HTML
and CSV; ``storage`` reads inputs and stores reports in a local folder or in
Supabase Storage. The job handlers in ``examq.handlers`` glue these together.
"""
