"""Text helpers shared by the importers and the report."""

from __future__ import annotations

import html
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
