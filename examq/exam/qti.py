"""QTI 2.1 importer: one ``assessmentItem`` file, or a content package (zip) of them.

Each item becomes one question, scored as QTI's response processing would score it:

- ``match_correct`` (and custom processing that compares with ``<correct>``): full
  credit only for exactly the correct response; a multiple response needs exactly
  the correct set;
- ``map_response`` (and custom processing using ``<mapResponse>``): each distinct
  chosen value earns its ``mappedValue`` (unmapped values earn the mapping's
  ``defaultValue``, 0 unless given), the sum is clamped to ``lowerBound`` and
  ``upperBound``, and an empty response scores 0. String keys compare case-sensitively
  unless ``caseSensitive="false"``.

The question's points are the most the item can score: ``upperBound`` when the mapping
has one, else the best response's mapped total (1 for match_correct); weights are the
mapped values divided by those points. Supported interactions: choice (single and
multiple), inlineChoice, textEntry (string, integer, float), match (directedPair) and
extendedText (an essay). An item with another interaction, several interactions, or
response processing examq cannot follow is refused, naming the item.
"""

from __future__ import annotations

import io
import lzma
import math
import posixpath
import zipfile
import zlib
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

from examq.exam.errors import ExamInputError, question_values
from examq.exam.model import (
    Choice,
    Essay,
    Exam,
    Matching,
    MatchPair,
    MultipleResponse,
    Numerical,
    NumericAnswer,
    Question,
    ShortAnswer,
    SingleChoice,
    TextAnswer,
    id_key,
)
from examq.exam.text import collapse_spaces, finite_number, shorten
from examq.exam.xml import (
    MAX_XML_BYTES,
    child,
    children,
    descendants,
    local_name,
    parse_xml,
)

_INTERACTIONS = {
    "choiceInteraction", "inlineChoiceInteraction", "textEntryInteraction",
    "matchInteraction", "extendedTextInteraction",
}  # fmt: skip
_UNSUPPORTED = {
    "orderInteraction", "associateInteraction", "gapMatchInteraction", "hotspotInteraction",
    "hottextInteraction", "graphicOrderInteraction", "graphicAssociateInteraction",
    "graphicGapMatchInteraction", "positionObjectInteraction", "selectPointInteraction",
    "sliderInteraction", "drawingInteraction", "uploadInteraction", "mediaInteraction",
    "customInteraction", "endAttemptInteraction",
}  # fmt: skip

# A content package may hold at most this many files and this many bytes unpacked
# (checked from the zip's directory before anything is extracted).
_MAX_PACKAGE_FILES = 2000
_MAX_PACKAGE_BYTES = 50 * 1024 * 1024

# The compression methods zipfile can unpack; others (WinZip's AES, 99) it cannot.
_ZIP_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
# What zipfile raises on an archive it cannot read: a bad CRC or header, a broken
# deflate, lzma or bzip2 stream (bz2 raises OSError), a stream that stops early, an
# offset pointing before the start (ValueError), a zip feature it does not
# implement. Caught only around zipfile's own calls, where nothing else raises them.
_DAMAGED_ZIP = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
)


@dataclass
class _MapEntry:
    key: str
    value: float
    case_sensitive: bool = True


@dataclass
class _Declaration:
    identifier: str
    cardinality: str
    base_type: str
    correct: list[str] = field(default_factory=list)
    entries: list[_MapEntry] = field(default_factory=list)
    has_mapping: bool = False
    default_value: float = 0.0
    lower: float | None = None
    upper: float | None = None


def parse_qti(
    data: bytes | str, *, name: str = "exam.xml", title: str | None = None
) -> Exam:
    """Import a QTI 2.1 item, or a content package (zip) of items, into the exam model.

    Raises ExamInputError naming the file and the item for unsafe or malformed input
    and for items examq cannot score.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if raw[:4] == b"PK\x03\x04":
        documents = _package_items(raw, name)
    else:
        documents = [(name, raw)]

    questions: list[Question] = []
    for document_name, document in documents:
        root = parse_xml(document, document_name)
        if local_name(root) == "questestinterop":
            raise ExamInputError(
                f"{document_name} is QTI 1.2 (as Canvas exports it), which examq does not import yet;"
                " export QTI 2.1, Moodle XML or GIFT instead"
            )
        if local_name(root) != "assessmentItem":
            raise ExamInputError(
                f"{document_name}: a QTI 2.1 item has an <assessmentItem> root, not <{local_name(root)}>"
                " (for an assessmentTest, upload the content package zip with its items)"
            )
        questions.append(_item(root, document_name))

    if not questions:
        raise ExamInputError(f"{name}: no QTI items found")
    _check_unique_ids(questions, name)
    return Exam(title=title, source_format="qti", questions=questions)


def _package_items(raw: bytes, name: str) -> list[tuple[str, bytes]]:
    """The item files of a content package, in the order its manifest lists them."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except _DAMAGED_ZIP as exc:
        raise ExamInputError(f"{name}: the zip archive is damaged: {exc}") from exc
    infos = archive.infolist()
    if (
        len(infos) > _MAX_PACKAGE_FILES
        or sum(i.file_size for i in infos) > _MAX_PACKAGE_BYTES
    ):
        raise ExamInputError(
            f"{name}: the package is too large (at most {_MAX_PACKAGE_FILES} files, {_MAX_PACKAGE_BYTES} bytes unpacked)"
        )
    names = {info.filename for info in infos}
    if "imsmanifest.xml" not in names:
        raise ExamInputError(
            f"{name}: a QTI content package needs an imsmanifest.xml at its root"
        )

    manifest = parse_xml(
        _read_member(archive, "imsmanifest.xml", name), f"{name}:imsmanifest.xml"
    )
    hrefs: list[str] = []
    for resource in descendants(manifest, "resource"):
        kind = resource.get("type", "")
        href = resource.get("href")
        if href and kind.startswith(("imsqti_item", "imsqti_xmlv1p2")):
            hrefs.append(posixpath.normpath(href))
    if not hrefs:
        raise ExamInputError(f"{name}: the manifest lists no QTI item resources")

    documents: list[tuple[str, bytes]] = []
    for href in hrefs:
        if href not in names:
            raise ExamInputError(
                f"{name}: the manifest lists {href}, which the package does not contain"
            )
        documents.append((f"{name}:{href}", _read_member(archive, href, name)))
    return documents


def _read_member(archive: zipfile.ZipFile, member: str, name: str) -> bytes:
    """A member's bytes; raise ExamInputError naming it if it cannot be unpacked."""
    info = archive.getinfo(member)
    if info.file_size > MAX_XML_BYTES:
        raise ExamInputError(f"{name}: {member} is larger than {MAX_XML_BYTES} bytes")
    if info.flag_bits & 0x1:
        raise ExamInputError(
            f"{name}: {member} is encrypted in the zip archive;"
            " upload the package without a password"
        )
    if info.compress_type not in _ZIP_METHODS:
        raise ExamInputError(
            f"{name}: {member} is packed with zip compression method"
            f" {info.compress_type}, which examq cannot unpack"
            f" (it reads {', '.join(_ZIP_METHODS.values())})"
        )

    try:
        with archive.open(info) as handle:
            return handle.read(MAX_XML_BYTES + 1)
    except _DAMAGED_ZIP as exc:
        raise ExamInputError(
            f"{name}: the zip archive is damaged: {member} cannot be unpacked ({exc})"
        ) from exc


# Items --------------------------------------------------------------------------


def _item(root: Element, file: str) -> Question:
    identifier = (root.get("identifier") or "").strip()
    label = f"'{root.get('title') or identifier}'"
    if not identifier:
        raise ExamInputError(f"{file}: the item has no identifier", question=label)
    with question_values(file, label, noun="item"):
        return _question(root, identifier, label, file)


def _question(root: Element, identifier: str, label: str, file: str) -> Question:
    body = child(root, "itemBody")
    if body is None:
        raise ExamInputError(f"{file}: item {label} has no itemBody", question=label)
    interactions = [
        e for e in body.iter() if local_name(e) in _INTERACTIONS | _UNSUPPORTED
    ]
    unsupported = [local_name(e) for e in interactions if local_name(e) in _UNSUPPORTED]
    if unsupported:
        raise ExamInputError(
            f"{file}: item {label} uses {unsupported[0]}, which examq cannot score",
            question=label,
        )
    if len(interactions) != 1:
        raise ExamInputError(
            f"{file}: item {label} has {len(interactions)} interactions; examq scores items with exactly one",
            question=label,
        )
    interaction = interactions[0]
    kind = local_name(interaction)

    common = {
        "id": identifier,
        "title": root.get("title") or None,
        "stem": _stem(body, interaction),
        "stem_format": "plain",
    }
    if kind == "extendedTextInteraction":
        return Essay(**common)

    declaration = _declaration(
        root, interaction.get("responseIdentifier", ""), label, file
    )
    processing = _processing(root, declaration, label, file)
    if kind in ("choiceInteraction", "inlineChoiceInteraction"):
        return _choice(interaction, declaration, processing, common, label, file)
    if kind == "textEntryInteraction":
        return _text_entry(declaration, processing, common, label, file)
    return _match(interaction, declaration, processing, common, label, file)


def _stem(body: Element, interaction: Element) -> str:
    """The item's text: the body outside the interaction, then the interaction's prompt.

    The tree is walked with a stack rather than by recursion, so a deeply nested body
    cannot exhaust Python's recursion limit.
    """
    parts: list[str] = []
    pending: list[Element | str] = [body]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            parts.append(item)
            continue
        if item is interaction:
            prompt = child(item, "prompt")
            if prompt is not None:
                parts.append("".join(prompt.itertext()))
            if item.tail:
                parts.append(item.tail)
            continue
        if item.text:
            parts.append(item.text)
        tail = [item.tail] if item is not body and item.tail else []
        # Children first, then the tail: pushed in reverse, popped in order.
        pending.extend(reversed([*item, *tail]))

    return collapse_spaces(" ".join(parts))


def _declaration(root: Element, identifier: str, label: str, file: str) -> _Declaration:
    for element in children(root, "responseDeclaration"):
        if element.get("identifier") != identifier:
            continue
        declaration = _Declaration(
            identifier=identifier,
            cardinality=element.get("cardinality", "single"),
            base_type=element.get("baseType", "identifier"),
        )
        correct = child(element, "correctResponse")
        if correct is not None:
            declaration.correct = [
                (v.text or "").strip() for v in children(correct, "value")
            ]
        mapping = child(element, "mapping")
        if mapping is not None:
            declaration.has_mapping = True
            declaration.default_value = _float(
                mapping.get("defaultValue", "0"), "defaultValue", label, file
            )
            if mapping.get("lowerBound") is not None:
                declaration.lower = _float(
                    mapping.get("lowerBound", ""), "lowerBound", label, file
                )
            if mapping.get("upperBound") is not None:
                declaration.upper = _float(
                    mapping.get("upperBound", ""), "upperBound", label, file
                )
            for entry in children(mapping, "mapEntry"):
                declaration.entries.append(
                    _MapEntry(
                        key=(entry.get("mapKey") or "").strip(),
                        value=_float(
                            entry.get("mappedValue", ""), "mappedValue", label, file
                        ),
                        case_sensitive=(
                            entry.get("caseSensitive", "true").strip().lower()
                            != "false"
                        ),
                    )
                )
            if (
                declaration.lower is not None
                and declaration.upper is not None
                and declaration.lower > declaration.upper
            ):
                raise ExamInputError(
                    f"{file}: item {label} has a mapping whose lowerBound is above its upperBound",
                    question=label,
                )
        return declaration
    raise ExamInputError(
        f"{file}: item {label} has no responseDeclaration {identifier!r}",
        question=label,
    )


def _float(text: str, what: str, label: str, file: str) -> float:
    try:
        return finite_number(text)
    except ValueError as exc:
        raise ExamInputError(
            f"{file}: item {label} has {what}={shorten(text, 40)!r},"
            " not a finite number",
            question=label,
        ) from exc


def _identifier(element: Element, label: str, file: str) -> str:
    """The identifier of a choice, which a response names; QTI requires one."""
    identifier = (element.get("identifier") or "").strip()
    if not identifier:
        raise ExamInputError(
            f"{file}: item {label} has a {local_name(element)} without an identifier",
            question=label,
        )
    return identifier


def _processing(root: Element, declaration: _Declaration, label: str, file: str) -> str:
    """Which scoring the item's responseProcessing asks for: 'correct' or 'map'."""
    element = child(root, "responseProcessing")
    if element is None:
        raise ExamInputError(
            f"{file}: item {label} has no responseProcessing, so it has no score",
            question=label,
        )
    template = (
        (element.get("template") or "")
        .rstrip("/")
        .rsplit("/", 1)[-1]
        .removesuffix(".xml")
    )
    if template == "match_correct":
        return "correct"
    if template == "map_response":
        return "map"
    if template:
        raise ExamInputError(
            f"{file}: item {label} uses the {template} template, which examq cannot score",
            question=label,
        )
    # Custom processing: recognise the two common shapes exporters write out in full.
    names = {local_name(e) for e in element.iter()}
    if "mapResponse" in names and declaration.has_mapping:
        return "map"
    if "match" in names and "correct" in names:
        return "correct"
    raise ExamInputError(
        f"{file}: item {label} has custom response processing that examq cannot follow"
        " (it understands match_correct and map_response)",
        question=label,
    )


def _choice(
    interaction: Element,
    declaration: _Declaration,
    processing: str,
    common: dict,
    label: str,
    file: str,
) -> Question:
    tag = (
        "simpleChoice"
        if local_name(interaction) == "choiceInteraction"
        else "inlineChoice"
    )
    options = [
        (_identifier(c, label, file), collapse_spaces("".join(c.itertext())))
        for c in descendants(interaction, tag)
    ]
    if not options:
        raise ExamInputError(f"{file}: item {label} offers no choices", question=label)
    multiple = declaration.cardinality in ("multiple", "ordered")

    if processing == "correct":
        correct = set(declaration.correct)
        if not correct:
            raise ExamInputError(
                f"{file}: item {label} uses match_correct but has no correctResponse",
                question=label,
            )
        share = 1.0 / len(correct) if multiple else 1.0
        choices = [
            Choice(id=i, text=t, weight=share if i in correct else 0.0)
            for i, t in options
        ]
        if multiple:
            return MultipleResponse(
                **common, choices=choices, all_or_nothing=True, points=1.0
            )
        return SingleChoice(**common, choices=choices, points=1.0)

    mapped = {e.key: e.value for e in declaration.entries}
    values = {i: mapped.get(i, declaration.default_value) for i, _ in options}
    if multiple:
        best = sum(v for v in values.values() if v > 0)
        worst = sum(v for v in values.values() if v < 0)
    else:
        best, worst = max(values.values()), min(values.values())
    points = _points(declaration, best, label, file)
    lower = declaration.lower if declaration.lower is not None else worst
    upper = declaration.upper if declaration.upper is not None else best
    if multiple:
        return MultipleResponse(
            **common,
            choices=[
                Choice(id=i, text=t, weight=values[i] / points) for i, t in options
            ],
            points=points,
            min_fraction=lower / points,
            max_fraction=upper / points,
        )
    # A single response's mapped value is clamped too; folding the bounds into the
    # weights gives the same score. (The weights are built clamped: the model checks
    # values when it is built, not when a field is changed.)
    choices = [
        Choice(id=i, text=t, weight=min(max(values[i], lower), upper) / points)
        for i, t in options
    ]
    return SingleChoice(**common, choices=choices, points=points)


def _text_entry(
    declaration: _Declaration, processing: str, common: dict, label: str, file: str
) -> Question:
    numeric = declaration.base_type in ("float", "integer")
    if declaration.base_type not in ("string", "float", "integer"):
        raise ExamInputError(
            f"{file}: item {label} has a textEntry of baseType {declaration.base_type}",
            question=label,
        )

    if processing == "correct":
        if not declaration.correct:
            raise ExamInputError(
                f"{file}: item {label} uses match_correct but has no correctResponse",
                question=label,
            )
        if numeric:
            answers = [
                NumericAnswer(
                    value=_float(v, "correctResponse", label, file), tolerance=0.0
                )
                for v in declaration.correct
            ]
            return Numerical(**common, answers=answers, points=1.0)
        return ShortAnswer(
            **common,
            answers=[
                TextAnswer(text=v, case_sensitive=True) for v in declaration.correct
            ],
            points=1.0,
        )

    if not numeric and not declaration.entries:
        # A text answer is scored by the entry it matches; with none, nothing can be.
        raise ExamInputError(
            f"{file}: item {label} uses map_response but its mapping has no mapEntry",
            question=label,
        )
    best = max([e.value for e in declaration.entries] + [declaration.default_value])
    points = _points(declaration, best, label, file)
    if numeric:
        answers = [
            NumericAnswer(
                value=_float(e.key, "mapKey", label, file),
                tolerance=0.0,
                weight=_bounded(e.value, declaration) / points,
            )
            for e in declaration.entries
        ]
        if declaration.default_value:
            answers.append(
                NumericAnswer(
                    weight=_bounded(declaration.default_value, declaration) / points
                )
            )
        return Numerical(**common, answers=answers, points=points)
    return ShortAnswer(
        **common,
        answers=[
            TextAnswer(
                text=e.key, weight=e.value / points, case_sensitive=e.case_sensitive
            )
            for e in declaration.entries
        ],
        unmatched_weight=declaration.default_value / points,
        min_fraction=None if declaration.lower is None else declaration.lower / points,
        max_fraction=None if declaration.upper is None else declaration.upper / points,
        points=points,
    )


def _match(
    interaction: Element,
    declaration: _Declaration,
    processing: str,
    common: dict,
    label: str,
    file: str,
) -> Matching:
    if declaration.base_type != "directedPair":
        raise ExamInputError(
            f"{file}: item {label} has a matchInteraction of baseType {declaration.base_type}",
            question=label,
        )
    sets = children(interaction, "simpleMatchSet")
    if len(sets) != 2:
        raise ExamInputError(
            f"{file}: item {label} needs two simpleMatchSets", question=label
        )
    sources = {
        _identifier(c, label, file): collapse_spaces("".join(c.itertext()))
        for c in children(sets[0], "simpleAssociableChoice")
    }
    targets = {
        _identifier(c, label, file): collapse_spaces("".join(c.itertext()))
        for c in children(sets[1], "simpleAssociableChoice")
    }

    if processing == "correct":
        keyed = [(pair, None) for pair in declaration.correct]
        points = 1.0
    else:
        positive = [(e.key, e.value) for e in declaration.entries if e.value > 0]
        keyed = positive
        points = _points(declaration, sum(v for _, v in positive), label, file)

    pairs: list[MatchPair] = []
    for key, value in keyed:
        source, _, target = " ".join(key.split()).partition(" ")
        if source not in sources or target not in targets:
            raise ExamInputError(
                f"{file}: item {label} pairs {key!r}, which are not among its choices",
                question=label,
            )
        pairs.append(
            MatchPair(
                prompt=sources[source],
                answer=targets[target],
                prompt_id=source,
                answer_id=target,
                weight=None if value is None else value / points,
            )
        )
    if not pairs:
        raise ExamInputError(
            f"{file}: item {label} has no correct pairs", question=label
        )
    used = {p.answer_id for p in pairs}
    distractors = [
        text for identifier, text in targets.items() if identifier not in used
    ]
    return Matching(
        **common,
        pairs=pairs,
        distractors=distractors,
        all_or_nothing=processing == "correct",
        points=points,
    )


def _points(declaration: _Declaration, best: float, label: str, file: str) -> float:
    """The most the item can score: the upper bound if there is one, else the best total."""
    points = best if declaration.upper is None else min(best, declaration.upper)
    if not math.isfinite(points):
        raise ExamInputError(
            f"{file}: item {label} has mapped values too large to add up",
            question=label,
        )
    if points <= 0:
        raise ExamInputError(
            f"{file}: item {label} cannot score above 0 with its mapping",
            question=label,
        )
    return points


def _bounded(value: float, declaration: _Declaration) -> float:
    if declaration.lower is not None:
        value = max(value, declaration.lower)
    if declaration.upper is not None:
        value = min(value, declaration.upper)
    return value


def _check_unique_ids(questions: list[Question], name: str) -> None:
    seen: set[str] = set()
    for question in questions:
        if id_key(question.id) in seen:
            raise ExamInputError(
                f"{name}: two items have the identifier {question.id!r}"
            )
        seen.add(id_key(question.id))
