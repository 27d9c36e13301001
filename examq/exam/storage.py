"""Where exam inputs are read from and reports are written to.

An input is given in a job's payload either inline (``{"text": "...", "name":
"exam.gift"}``, for small files) or as a Storage object (``{"bucket": "exam-uploads",
"path": "<user id>/exam.gift"}``). On Supabase the object is read through
supabase-py's Storage client with the service role; in local runs a folder stands in
for Storage (``EXAMQ_STORAGE_DIR``, one sub-folder per bucket). A missing or
unreadable object is a permanent failure naming it; a Storage outage is retryable.

The worker reads Storage with the service role, which can read every object, so a
user's job may only name objects under a folder named after that user's id (the
layout Supabase recommends for per-user files, which the bucket policies of the
exam_chain migration enforce for uploads).

Reports go to ``EXAMQ_REPORTS_DIR`` (default ``<EXAMQ_DATA_DIR>/reports``) in local
runs, or to the ``EXAMQ_REPORTS_BUCKET`` bucket on Supabase, each job under
``<owner>/<job id>/``; the links are file URIs locally and signed URLs on Supabase
(valid ``EXAMQ_REPORT_LINK_SECONDS``), and the bucket and path are returned too so
that the dashboard can sign its own link with the user's session.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from examq.config import BUCKET_NAME, MIN_INPUT_LIMIT_BYTES
from examq.errors import PermanentError, RetryableError
from examq.exam.settings import ExamSettings, load_exam_settings


@dataclass(frozen=True)
class Input:
    """An input file's bytes and a name for messages and format detection."""

    data: bytes
    name: str


def describe_source(source: Any, field: str) -> str:
    """How messages name an input: ``bucket/path`` or ``inline <name>``."""
    if isinstance(source, dict) and "bucket" in source:
        return f"{source.get('bucket')}/{source.get('path')}"
    if isinstance(source, dict):
        return f"inline {source.get('name') or field}"
    return field


def check_source(source: Any, field: str) -> None:
    """Raise PermanentError unless ``source`` is an inline text or a bucket and path."""
    if not isinstance(source, dict):
        raise PermanentError(
            f'{field} must be an object: {{"text": ...}} or {{"bucket": ..., "path": ...}}'
        )
    if "text" in source:
        if not isinstance(source["text"], str):
            raise PermanentError(f"{field}.text must be a string")
        return
    bucket, path = source.get("bucket"), source.get("path")
    if not isinstance(bucket, str) or not BUCKET_NAME.match(bucket):
        raise PermanentError(
            f"{field}.bucket must be a Storage bucket name, not {bucket!r}"
        )
    if (
        not isinstance(path, str)
        or not path
        or path.startswith("/")
        or ".." in path.split("/")
        or "\\" in path
    ):
        raise PermanentError(
            f"{field}.path must be a relative object path without '..', not {path!r}"
        )


def read_input(
    source: Any, field: str, settings: ExamSettings, *, owner: str | None
) -> Input:
    """Read an input given inline or as a Storage object.

    ``owner`` is the job's user id (None for system jobs); a user's job may only read
    objects under ``<owner>/``. Raises PermanentError naming the input when it is
    malformed, not the owner's, missing, unreadable or too large; RetryableError when
    Storage cannot be reached.
    """
    check_source(source, field)
    if "text" in source:
        data = source["text"].encode("utf-8")
        name = str(source.get("name") or field)
        _check_size(len(data), f"inline {name}", settings)
        return Input(data=data, name=name)

    bucket, path = source["bucket"], source["path"]
    where = f"{bucket}/{path}"
    if owner is not None and not path.startswith(f"{owner}/"):
        raise PermanentError(
            f"{field}: {where} is not in your folder ({owner}/...); upload it there"
        )
    if settings.inputs_in_supabase:
        data = _download(settings, bucket, path, where)
    else:
        data = _read_local(settings.local_storage_dir, bucket, path, where)
    _check_size(len(data), where, settings)
    return Input(data=data, name=path.rsplit("/", 1)[-1])


def _check_size(size: int, where: str, settings: ExamSettings) -> None:
    if size > settings.max_input_bytes:
        raise PermanentError(
            f"{where} is {size} bytes; inputs are limited to {settings.max_input_bytes}"
            " bytes (EXAMQ_MAX_INPUT_BYTES)"
        )


def check_text_size(data: str | bytes, where: str) -> None:
    """Raise PermanentError when a payload's text is over EXAMQ_MAX_INPUT_BYTES (as UTF-8).

    ``where`` names the input in the message. The limit applies to inline texts as it
    applies to the files read by ``read_input``.
    """
    size = len(data) if isinstance(data, bytes | bytearray) else len(data.encode("utf-8"))
    # Within the smallest limit allowed, an input is within the configured one too:
    # small grading jobs, most of them, skip reading the settings.
    if size <= MIN_INPUT_LIMIT_BYTES:
        return
    _check_size(size, where, load_exam_settings())


def _read_local(root: Path, bucket: str, path: str, where: str) -> bytes:
    base = (root / bucket).resolve()
    target = (base / path).resolve()
    if base not in target.parents:
        raise PermanentError(f"{where} is outside the bucket")
    try:
        return target.read_bytes()
    except FileNotFoundError as exc:
        raise PermanentError(f"{where} does not exist (looked in {root})") from exc
    except OSError as exc:
        raise PermanentError(f"{where} cannot be read: {exc.strerror or exc}") from exc


def _storage_client(settings: ExamSettings) -> Any:
    from supabase import create_client

    key = settings.supabase_service_role_key.get_secret_value()  # type: ignore[union-attr]
    return create_client(settings.supabase_url, key).storage  # type: ignore[arg-type]


def _download(settings: ExamSettings, bucket: str, path: str, where: str) -> bytes:
    import httpx
    from storage3.exceptions import StorageApiError

    try:
        return _storage_client(settings).from_(bucket).download(path)
    except StorageApiError as exc:
        status = str(exc.status)
        if status in ("400", "401", "403", "404"):
            raise PermanentError(
                f"{where} cannot be read from Storage: {exc.message} ({status})"
            ) from exc
        raise RetryableError(
            f"Storage failed reading {where}: {exc.message} ({status})"
        ) from exc
    except httpx.HTTPError as exc:
        raise RetryableError(
            f"Storage unreachable reading {where}: {type(exc).__name__}"
        ) from exc


# Reports ------------------------------------------------------------------------


def store_report(
    settings: ExamSettings, prefix: str, files: dict[str, tuple[bytes, str]]
) -> dict[str, dict[str, Any]]:
    """Store report files under ``prefix`` and return a link record per file name.

    ``files`` maps a file name to its bytes and content type. Each record has
    ``url`` (a file URI locally, a signed URL on Supabase), ``path``, and ``bucket``
    and ``expires_at`` on Supabase. Raises RetryableError when Storage fails.
    """
    if settings.reports_in_supabase:
        return _upload_reports(settings, prefix, files)

    folder = settings.local_reports_dir / prefix
    folder.mkdir(parents=True, exist_ok=True)
    links: dict[str, dict[str, Any]] = {}
    for name, (data, _content_type) in files.items():
        target = folder / name
        target.write_bytes(data)
        links[name] = {"url": target.resolve().as_uri(), "path": str(target.resolve())}
    return links


def _upload_reports(
    settings: ExamSettings, prefix: str, files: dict[str, tuple[bytes, str]]
) -> dict[str, dict[str, Any]]:
    import httpx
    from storage3.exceptions import StorageApiError

    bucket = _storage_client(settings).from_(settings.reports_bucket)
    expires_at = datetime.now(UTC) + timedelta(seconds=settings.report_link_seconds)
    links: dict[str, dict[str, Any]] = {}
    try:
        for name, (data, content_type) in files.items():
            path = f"{prefix}/{name}"
            # Upsert: a retried report job overwrites what an earlier attempt stored.
            bucket.upload(path, data, {"content-type": content_type, "upsert": "true"})
            signed = bucket.create_signed_url(path, settings.report_link_seconds)
            links[name] = {
                "url": signed.get("signedURL") or signed.get("signedUrl"),
                "bucket": settings.reports_bucket,
                "path": path,
                "expires_at": expires_at.isoformat(timespec="seconds"),
            }
    except StorageApiError as exc:
        raise RetryableError(
            f"Storage refused the report upload: {exc.message} ({exc.status})"
        ) from exc
    except httpx.HTTPError as exc:
        raise RetryableError(
            f"Storage unreachable storing the report: {type(exc).__name__}"
        ) from exc
    return links
