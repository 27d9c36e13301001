"""Notifications: e-mail (SendGrid) and Slack messages about finished jobs, and admin alerts.

The database writes what to send: a trigger on ``public.job_events`` puts a row in
``public.notification_outbox`` in the transaction of every transition to a final
state, by the owner's preferences, and ``check_admin_alerts`` adds the admins'
alerts. The dispatcher (``examq.notify.dispatcher``), run by each cron tick and by
``examq notify``, claims those rows with a lease, sends them and records the answer,
so that each notification is delivered at most once.
"""

from __future__ import annotations

from examq.notify.dispatcher import Dispatcher, DispatchSummary

__all__ = ["DispatchSummary", "Dispatcher"]
