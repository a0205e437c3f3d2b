"""Reading essays for ``cjllm rank``: a folder of ``.txt``/``.md``/``.docx``/``.pdf`` files,
or a CSV/JSONL file.

Word files are read with ``python-docx`` (paragraph text, tables included), PDFs with
``pypdf`` (the text layer; a scanned PDF has none and is refused naming the file — run it
through OCR first). Both are imported only when a folder holds such a file.

Every problem a user can fix is an :class:`EssayInputError` naming the file (and line, for
CSV/JSONL) and what is wrong, raised before any essay reaches a judge: a missing path, an
empty folder, an unreadable or non-UTF-8 file, an empty essay, a duplicate id, fewer than two
essays. Nothing is skipped silently except files a folder is not expected to hold as essays
(anything not ``.txt``/``.md``/``.docx``/``.pdf``, e.g. ``manifest.json``, and hidden files,
including Word's ``~$`` lock files).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ESSAY_SUFFIXES = (".txt", ".md", ".docx", ".pdf")
TABLE_SUFFIXES = (".csv", ".jsonl")
MIN_ESSAYS = 2


class EssayInputError(ValueError):
    """Bad essay input. ``path`` is the file (or folder) to fix; ``line`` when it is a row."""

    def __init__(self, path: Path, problem: str, line: int | None = None) -> None:
        self.path = path
        self.problem = problem
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Essay:
    """One essay: its id (file stem or ``essay_id`` column), text, and where it came from."""

    essay_id: str
    text: str
    source: str
    grade: str | None = None


def read_text(path: Path, what: str = "file") -> str:
    """Read a UTF-8 text file (a BOM is allowed), turning OS and decoding errors into
    :class:`EssayInputError` naming the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EssayInputError(path, f"{what} not found") from None
    except IsADirectoryError:
        raise EssayInputError(path, f"{what} is a folder, expected a file") from None
    except OSError as exc:
        raise EssayInputError(path, f"cannot read {what}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EssayInputError(
            path,
            f"{what} is not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8",
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_essays(path: Path) -> list[Essay]:
    """Load essays from a folder, ``.csv`` or ``.jsonl``; at least two, unique ids, none empty."""
    if not path.exists():
        raise EssayInputError(path, "no such file or folder")
    if path.is_dir():
        essays = _load_folder(path)
    elif path.suffix.lower() == ".csv":
        essays = _load_csv(path, require_grade=False)
    elif path.suffix.lower() == ".jsonl":
        essays = _load_jsonl(path, require_grade=False)
    else:
        raise EssayInputError(
            path,
            "expected a folder of .txt/.md/.docx/.pdf essays, a .csv or a .jsonl file "
            f"(got a {path.suffix or 'suffix-less'} file)",
        )
    if len(essays) < MIN_ESSAYS:
        raise EssayInputError(
            path,
            f"found {len(essays)} essay; comparative judgement needs at least {MIN_ESSAYS}",
        )
    return essays


def load_anchors(path: Path) -> list[Essay]:
    """Load anchor essays (known grades) from a ``.csv``/``.jsonl`` with ``essay_id,text,grade``."""
    if not path.exists():
        raise EssayInputError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        anchors = _load_csv(path, require_grade=True)
    elif suffix == ".jsonl":
        anchors = _load_jsonl(path, require_grade=True)
    else:
        raise EssayInputError(
            path, "anchors must be a .csv or .jsonl file with essay_id,text,grade"
        )
    if not anchors:
        raise EssayInputError(path, "no anchor essays in the file")
    return anchors


def check_distinct(essays: Sequence[Essay], anchors: Sequence[Essay], anchors_path: Path) -> None:
    """Anchor ids must not collide with essay ids."""
    ids = {e.essay_id: e for e in essays}
    for anchor in anchors:
        if anchor.essay_id in ids:
            raise EssayInputError(
                anchors_path,
                f"anchor id {anchor.essay_id!r} is also an essay id "
                f"(from {ids[anchor.essay_id].source}); ids must be unique",
            )


def essay_set_digest(essays: Iterable[Essay]) -> str:
    """A fingerprint of the essay set (ids and texts, order-independent), to recognise a rerun."""
    h = hashlib.sha256()
    for essay in sorted(essays, key=lambda e: e.essay_id):
        h.update(essay.essay_id.encode("utf-8") + b"\x00")
        h.update(hashlib.sha256(essay.text.encode("utf-8")).digest())
    return h.hexdigest()


# --------------------------------------------------------------------------- folders


def _load_folder(folder: Path) -> list[Essay]:
    files = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in ESSAY_SUFFIXES
        and not p.name.startswith((".", "~$"))
        and not p.is_dir()
    )
    if not files:
        raise EssayInputError(
            folder,
            "no essays: the folder holds no .txt, .md, .docx or .pdf files (essay id = file stem)",
        )
    seen: dict[str, Path] = {}
    essays: list[Essay] = []
    for file in files:
        essay_id = file.stem
        if essay_id in seen:
            raise EssayInputError(
                file, f"duplicate essay id {essay_id!r}: {seen[essay_id].name} has the same stem"
            )
        seen[essay_id] = file
        text = _read_essay_file(file).strip()
        if not text:
            raise EssayInputError(file, "empty essay (the file holds no text)")
        essays.append(Essay(essay_id=essay_id, text=text, source=str(file)))
    return essays


def _read_essay_file(file: Path) -> str:
    suffix = file.suffix.lower()
    if suffix == ".docx":
        return read_docx(file)
    if suffix == ".pdf":
        return read_pdf(file)
    return read_text(file, "essay")


def read_docx(path: Path) -> str:
    """The text of a Word document: its paragraphs, then its tables' cells, one per line."""
    import zipfile

    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise EssayInputError(
            path, f"not a readable Word (.docx) file ({type(exc).__name__}: {exc})"
        ) from None
    except OSError as exc:
        raise EssayInputError(path, f"cannot read essay: {exc.strerror or exc}") from None
    lines = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            lines.extend(cell.text for cell in row.cells)
    return "\n".join(lines).replace("\r\n", "\n").replace("\r", "\n")


def read_pdf(path: Path) -> str:
    """The text layer of a PDF, page by page. A PDF without one (a scan) is an error."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            raise EssayInputError(path, "the PDF is encrypted; save an unprotected copy")
        pages = [page.extract_text() or "" for page in reader.pages]
    except PdfReadError as exc:
        raise EssayInputError(path, f"not a readable PDF ({exc})") from None
    except OSError as exc:
        raise EssayInputError(path, f"cannot read essay: {exc.strerror or exc}") from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise EssayInputError(
            path,
            f"the PDF has no text layer ({len(pages)} page(s) of images, e.g. a scan); run it "
            "through OCR or save the essay as text",
        )
    return text


# --------------------------------------------------------------------------- tables


def _collect(
    path: Path, rows: Iterable[tuple[int, str, str, str | None]], require_grade: bool
) -> list[Essay]:
    seen: dict[str, int] = {}
    essays: list[Essay] = []
    for line, essay_id, text, grade in rows:
        essay_id = essay_id.strip()
        if not essay_id:
            raise EssayInputError(path, "empty essay_id", line)
        if essay_id in seen:
            raise EssayInputError(
                path, f"duplicate essay id {essay_id!r} (first on line {seen[essay_id]})", line
            )
        seen[essay_id] = line
        text = text.strip()
        if not text:
            raise EssayInputError(path, f"empty essay {essay_id!r} (no text)", line)
        if require_grade and not (grade or "").strip():
            raise EssayInputError(path, f"anchor {essay_id!r} has no grade", line)
        essays.append(
            Essay(
                essay_id=essay_id,
                text=text,
                source=f"{path}:{line}",
                grade=grade.strip() if grade else None,
            )
        )
    return essays


def _load_csv(path: Path, require_grade: bool) -> list[Essay]:
    content = read_text(path, "CSV file")
    reader = csv.DictReader(io.StringIO(content, newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns
    needed = ["essay_id", "text"] + (["grade"] if require_grade else [])
    missing = [c for c in needed if c not in columns]
    if missing:
        have = ", ".join(columns) if columns else "no header"
        raise EssayInputError(
            path, f"CSV needs columns {', '.join(needed)}; missing {', '.join(missing)} ({have})", 1
        )

    def rows() -> Iterable[tuple[int, str, str, str | None]]:
        try:
            for row in reader:
                if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                    continue  # a blank line
                line = reader.line_num
                yield line, row["essay_id"] or "", row["text"] or "", row.get("grade")
        except csv.Error as exc:
            raise EssayInputError(path, f"malformed CSV: {exc}", reader.line_num) from None

    return _collect(path, rows(), require_grade)


def _load_jsonl(path: Path, require_grade: bool) -> list[Essay]:
    content = read_text(path, "JSONL file")

    def rows() -> Iterable[tuple[int, str, str, str | None]]:
        for number, raw in enumerate(content.split("\n"), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise EssayInputError(path, f"not a JSON object: {exc.msg}", number) from None
            if not isinstance(obj, dict):
                raise EssayInputError(path, "each line must be a JSON object", number)
            for key in ("essay_id", "text"):
                if not isinstance(obj.get(key), str):
                    raise EssayInputError(path, f"{key!r} must be a string", number)
            grade = obj.get("grade")
            if grade is not None and not isinstance(grade, str):
                grade = str(grade)
            yield number, obj["essay_id"], obj["text"], grade

    return _collect(path, rows(), require_grade)
