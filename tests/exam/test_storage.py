"""Inputs and reports: the local folders, and Supabase Storage faked at the HTTP layer."""

from __future__ import annotations

import httpx
import pytest
import respx

from examq.errors import PermanentError, RetryableError
from examq.exam.settings import load_exam_settings
from examq.exam.storage import read_input, store_report

PROJECT = "https://proj.supabase.co"
SERVICE_KEY = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJl"
OWNER = "00000000-0000-4000-8000-000000000001"


@pytest.fixture
def local(monkeypatch, tmp_path):
    for name in (
        "DATABASE_URL",
        "SUPABASE_URL",
        "SUPABASE_SERVICE_ROLE_KEY",
        "EXAMQ_REPORTS_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EXAMQ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EXAMQ_STORAGE_DIR", str(tmp_path / "storage"))
    return load_exam_settings()


@pytest.fixture
def supabase(monkeypatch, tmp_path):
    for name in ("DATABASE_URL", "EXAMQ_STORAGE_DIR", "EXAMQ_REPORTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EXAMQ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SUPABASE_URL", PROJECT)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", SERVICE_KEY)
    monkeypatch.setenv("EXAMQ_REPORT_LINK_SECONDS", "3600")
    return load_exam_settings()


def test_inline_input_is_read_as_given(local) -> None:
    source = read_input(
        {"text": "Q {=a ~b}", "name": "quiz.gift"}, "exam", local, owner=OWNER
    )

    assert (source.data, source.name) == (b"Q {=a ~b}", "quiz.gift")


def test_local_input_is_read_from_the_bucket_folder(local, tmp_path) -> None:
    target = tmp_path / "storage" / "exam-uploads" / OWNER / "quiz.gift"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"Q {=a ~b}")

    source = read_input(
        {"bucket": "exam-uploads", "path": f"{OWNER}/quiz.gift"},
        "exam",
        local,
        owner=OWNER,
    )

    assert (source.data, source.name) == (b"Q {=a ~b}", "quiz.gift")


@pytest.mark.parametrize(
    ("source", "owner", "fragment"),
    [
        (
            {"bucket": "exam-uploads", "path": f"{OWNER}/missing.gift"},
            OWNER,
            "exam-uploads/" + OWNER + "/missing.gift does not exist",
        ),
        (
            {"bucket": "exam-uploads", "path": "someone-else/quiz.gift"},
            OWNER,
            "is not in your folder",
        ),
        ({"bucket": "exam-uploads", "path": f"{OWNER}/../x"}, OWNER, "without '..'"),
        ({"bucket": "Bad Bucket", "path": "x"}, None, "bucket name"),
        ({"path": "x"}, None, "bucket name"),
        ("exam.gift", None, "must be an object"),
    ],
)
def test_bad_or_missing_inputs_fail_permanently_naming_them(
    local, source, owner, fragment
) -> None:
    with pytest.raises(PermanentError) as raised:
        read_input(source, "exam", local, owner=owner)

    assert fragment in str(raised.value)


def test_oversized_input_is_refused(local, monkeypatch) -> None:
    monkeypatch.setenv("EXAMQ_MAX_INPUT_BYTES", "1024")

    with pytest.raises(PermanentError, match="limited to 1024 bytes"):
        read_input({"text": "x" * 2000}, "responses", load_exam_settings(), owner=None)


def test_local_reports_go_to_the_reports_folder(local, tmp_path) -> None:
    links = store_report(
        local, f"{OWNER}/7", {"report.html": (b"<html></html>", "text/html")}
    )

    target = tmp_path / "data" / "reports" / OWNER / "7" / "report.html"
    assert target.read_bytes() == b"<html></html>"
    assert links["report.html"]["url"] == target.resolve().as_uri()


@respx.mock
def test_supabase_input_is_downloaded_with_the_service_role(supabase) -> None:
    route = respx.get(
        f"{PROJECT}/storage/v1/object/exam-uploads/{OWNER}/quiz.gift"
    ).mock(return_value=httpx.Response(200, content=b"Q {=a ~b}"))

    source = read_input(
        {"bucket": "exam-uploads", "path": f"{OWNER}/quiz.gift"},
        "exam",
        supabase,
        owner=OWNER,
    )

    assert source.data == b"Q {=a ~b}" and source.name == "quiz.gift"
    assert route.calls.last.request.headers["authorization"] == f"Bearer {SERVICE_KEY}"


@respx.mock
def test_supabase_missing_object_is_permanent_and_named(supabase) -> None:
    respx.get(f"{PROJECT}/storage/v1/object/exam-uploads/{OWNER}/gone.csv").mock(
        return_value=httpx.Response(
            400,
            json={
                "statusCode": "404",
                "error": "not_found",
                "message": "Object not found",
            },
        )
    )

    with pytest.raises(
        PermanentError,
        match=f"exam-uploads/{OWNER}/gone.csv cannot be read from Storage: Object not found",
    ):
        read_input(
            {"bucket": "exam-uploads", "path": f"{OWNER}/gone.csv"},
            "responses",
            supabase,
            owner=OWNER,
        )


@respx.mock
def test_supabase_outage_is_retryable(supabase) -> None:
    respx.get(f"{PROJECT}/storage/v1/object/exam-uploads/{OWNER}/quiz.gift").mock(
        return_value=httpx.Response(
            503,
            json={"statusCode": "503", "error": "unavailable", "message": "try later"},
        )
    )

    with pytest.raises(RetryableError):
        read_input(
            {"bucket": "exam-uploads", "path": f"{OWNER}/quiz.gift"},
            "exam",
            supabase,
            owner=OWNER,
        )


@respx.mock
def test_supabase_reports_are_uploaded_and_signed(supabase) -> None:
    upload = respx.post(
        f"{PROJECT}/storage/v1/object/exam-reports/{OWNER}/7/report.html"
    ).mock(
        return_value=httpx.Response(
            200, json={"Key": f"exam-reports/{OWNER}/7/report.html", "Id": "1"}
        )
    )
    sign = respx.post(
        f"{PROJECT}/storage/v1/object/sign/exam-reports/{OWNER}/7/report.html"
    ).mock(
        return_value=httpx.Response(
            200,
            json={
                "signedURL": f"/object/sign/exam-reports/{OWNER}/7/report.html?token=t0k"
            },
        )
    )

    links = store_report(
        supabase,
        f"{OWNER}/7",
        {"report.html": (b"<html></html>", "text/html; charset=utf-8")},
    )

    request = upload.calls.last.request
    assert request.headers["x-upsert"] == "true"
    assert (
        b"<html></html>" in request.content
        and b"text/html; charset=utf-8" in request.content
    )
    assert b'"3600"' in sign.calls.last.request.content
    link = links["report.html"]
    assert (
        link["url"]
        == f"{PROJECT}/storage/v1/object/sign/exam-reports/{OWNER}/7/report.html?token=t0k"
    )
    assert (link["bucket"], link["path"]) == ("exam-reports", f"{OWNER}/7/report.html")


@respx.mock
def test_supabase_report_upload_failure_is_retryable(supabase) -> None:
    respx.post(f"{PROJECT}/storage/v1/object/exam-reports/system/7/report.html").mock(
        return_value=httpx.Response(
            400,
            json={
                "statusCode": "404",
                "error": "Bucket not found",
                "message": "Bucket not found",
            },
        )
    )

    with pytest.raises(RetryableError, match="Bucket not found"):
        store_report(supabase, "system/7", {"report.html": (b"x", "text/html")})
