"""Text helpers shared by the importers and the report."""

from __future__ import annotations

import html
import math
import re
from html.parser import HTMLParser

# Elements after which a reader expects a break between words.
_BLOCK_TAGS = {
    "p",
    "br",
    "div",
    "li",
    "tr",
    "td",
    "th",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
}


class _TextCollector(HTMLParser):
    """Collects the text of an HTML fragment, with a space where a block ends."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_to_text(fragment: str) -> str:
    """The readable text of an HTML fragment: tags dropped, entities decoded, spaces collapsed."""
    if "<" not in fragment and "&" not in fragment:
        return collapse_spaces(fragment)
    collector = _TextCollector()
    collector.feed(fragment)
    collector.close()
    return collapse_spaces(html.unescape("".join(collector.parts)))


def plain_text(text: str, text_format: str) -> str:
    """Text as a reader sees it, whatever its format (HTML is rendered to text)."""
    if text_format in ("html", "moodle"):
        return html_to_text(text)
    return collapse_spaces(text)


def collapse_spaces(text: str) -> str:
    """Runs of white space become one space; the ends are trimmed."""
    return re.sub(r"\s+", " ", text).strip()


def shorten(text: str, limit: int = 80) -> str:
    """The text cut to ``limit`` characters with an ellipsis when it was longer."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def finite_number(text: str) -> float:
    """The number ``text`` spells, which must be finite.

    Raises ValueError for text that is not a number, and for ``inf``, ``nan`` and
    numbers beyond a float's range (``1e999``), which Python's float() accepts but no
    exam means: a caller names the question and the field.
    """
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def decode_upload(data: bytes, name: str) -> str:
    """The text of an uploaded file: UTF-8 (a byte order mark dropped), or UTF-16 with
    its byte order mark (what Excel saves as "Unicode text").

    Raises ExamInputError naming the file otherwise, saying how to save it: any other
    encoding (Windows-1252, Latin-1) cannot be told apart from the next with certainty,
    and a wrong guess would change names and answers silently.
    """
    from examq.exam.errors import ExamInputError

    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise ExamInputError(f"{name} starts like UTF-16 text but is not (offset {exc.start})") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ExamInputError(
            f"{name} is not UTF-8 text (invalid byte at offset {exc.start}); save it as UTF-8 "
            "(in Excel: 'CSV UTF-8 (Comma delimited)')"
        ) from exc


_SEP_LINE = re.compile(r"^sep=(.)\r?\n", re.IGNORECASE)


def csv_delimiter(text: str) -> tuple[str, str]:
    """The delimiter of a CSV text, and the text without Excel's ``sep=`` line.

    Excel writes ``;`` where the decimal separator is a comma, and "Unicode text" is
    tab-separated. A file is read with ``;`` or a tab only when its first line (the
    header) has no comma and has that character; a ``sep=x`` first line says so
    outright. Anything else is comma-separated.
    """
    text = text.removeprefix("\ufeff")
    declared = _SEP_LINE.match(text)
    if declared:
        return declared.group(1), text[declared.end():]
    header = next((line for line in text.splitlines() if line.strip()), "")
    if "," not in header:
        for candidate in (";", "\t"):
            if candidate in header:
                return candidate, text
    return ",", text
