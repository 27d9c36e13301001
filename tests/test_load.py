"""The load scenario's simulated teachers."""

from examq.load import ensure_teachers
from examq.queue import Queue


def test_load_teachers_get_no_emails_for_their_jobs(db_url, sql, queue: Queue):
    teachers = ensure_teachers(db_url, 3)
    assert [tier for _, tier in teachers] == ["free", "pro", "enterprise"]
    # Run again: the teachers are kept, not duplicated.
    assert ensure_teachers(db_url, 3) == teachers

    job = queue.enqueue("exam.grade", {"key_csv": "", "responses_csv": ""}, user_id=teachers[0][0])
    claimed = queue.claim("w", 1)
    assert [j.id for j in claimed] == [job.id]
    queue.fail(claimed[0], "broken on purpose", "permanent")

    assert queue.get(job.id).status == "dead"
    assert sql.execute(
        "select count(*) from notification_outbox where job_id = %s and audience = 'owner'", (job.id,)
    ).fetchone()[0] == 0
    assert sql.execute(
        "select count(*) from notification_preferences where user_id = any(%s) and not email_enabled",
        ([t for t, _ in teachers],),
    ).fetchone()[0] == 3
