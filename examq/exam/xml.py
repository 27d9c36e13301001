"""Hardened XML parsing for uploaded exam files.

Uploaded XML is untrusted. defusedxml refuses external entities, entity expansion
("billion laughs") and DTDs, and the size is checked before parsing, so a file can
neither read the server's files nor exhaust its memory.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

from examq.exam.errors import ExamInputError

# Bigger than any real exam export; a larger upload is refused before parsing.
MAX_XML_BYTES = 20 * 1024 * 1024


def parse_xml(data: bytes | str, name: str) -> Element:
    """Parse untrusted XML; raise ExamInputError naming the file if it is unsafe or malformed."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > MAX_XML_BYTES:
        raise ExamInputError(
            f"{name} is {len(raw)} bytes; exam files are limited to {MAX_XML_BYTES} bytes"
        )
    try:
        return fromstring(raw, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise ExamInputError(
            f"{name} is refused: it declares a DTD or entities ({type(exc).__name__}), which exam files never need"
        ) from exc
    except ParseError as exc:
        raise ExamInputError(f"{name} is not well-formed XML: {exc}") from exc
    except (LookupError, ValueError) as exc:
        # The XML declaration names the encoding, and the parser looks it up: an
        # unknown name is a LookupError, a codec it cannot use (multi-byte, or
        # failing on the bytes) a ValueError or UnicodeError.
        raise ExamInputError(
            f"{name} declares an encoding examq cannot read ({exc}); save it as UTF-8"
        ) from exc


def local_name(element: Element) -> str:
    """The tag without its namespace: ``{http://...}choiceInteraction`` -> ``choiceInteraction``."""
    tag = element.tag if isinstance(element.tag, str) else ""
    return tag.rsplit("}", 1)[-1]


def children(element: Element, name: str) -> list[Element]:
    """Direct children with the local name ``name``."""
    return [child for child in element if local_name(child) == name]


def child(element: Element, name: str) -> Element | None:
    """The first direct child with the local name ``name``, if any."""
    return next((c for c in element if local_name(c) == name), None)


def descendants(element: Element, name: str) -> list[Element]:
    """All descendants with the local name ``name``, in document order."""
    return [e for e in element.iter() if local_name(e) == name]
