"""Essay input: folders, CSV and JSONL load; every bad input is an error naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cjllm.essays import (
    EssayInputError,
    check_distinct,
    essay_set_digest,
    load_anchors,
    load_essays,
    read_text,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "essays"


def _write(folder: Path, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        target = folder / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    return folder


def test_folder_loads_txt_and_md_with_file_stem_as_id(tmp_path: Path) -> None:
    folder = _write(tmp_path / "in", {"b.txt": "  Second essay.\n", "a.md": "# First\n\nText."})
    essays = load_essays(folder)
    assert [e.essay_id for e in essays] == ["a", "b"]
    assert essays[1].text == "Second essay."
    assert essays[0].source.endswith("a.md")


def test_folder_ignores_manifest_and_other_files(tmp_path: Path) -> None:
    folder = _write(
        tmp_path / "in",
        {
            "a.txt": "One.",
            "b.txt": "Two.",
            "manifest.json": "{}",
            "notes.odt": b"\xff\xfe",
            ".x.txt": "",
        },
    )
    assert [e.essay_id for e in load_essays(folder)] == ["a", "b"]


def test_examples_folder_loads_every_manifest_essay() -> None:
    manifest = json.loads((EXAMPLES / "manifest.json").read_text(encoding="utf-8"))
    essays = load_essays(EXAMPLES)
    assert sorted(e.essay_id for e in essays) == sorted(m["essay_id"] for m in manifest["essays"])
    assert len(essays) >= 16


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(EssayInputError, match="no such file or folder") as err:
        load_essays(tmp_path / "nope")
    assert err.value.path == tmp_path / "nope"


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    folder = _write(tmp_path / "in", {"manifest.json": "{}"})
    with pytest.raises(EssayInputError, match=r"no \.txt, \.md, \.docx or \.pdf files") as err:
        load_essays(folder)
    assert str(folder) in str(err.value)


def test_single_essay_is_an_error(tmp_path: Path) -> None:
    folder = _write(tmp_path / "in", {"only.txt": "Alone."})
    with pytest.raises(EssayInputError, match="at least 2"):
        load_essays(folder)


def test_empty_essay_names_the_file(tmp_path: Path) -> None:
    folder = _write(tmp_path / "in", {"a.txt": "Fine.", "blank.txt": "  \n\n "})
    with pytest.raises(EssayInputError, match="empty essay") as err:
        load_essays(folder)
    assert err.value.path.name == "blank.txt"


def test_non_utf8_file_names_the_file_and_offset(tmp_path: Path) -> None:
    folder = _write(tmp_path / "in", {"a.txt": "Fine.", "latin1.txt": "caf\xe9".encode("latin-1")})
    with pytest.raises(EssayInputError, match=r"not UTF-8.*offset 3") as err:
        load_essays(folder)
    assert err.value.path.name == "latin1.txt"


def test_unreadable_file_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod 0 does not stop root (CI runs as root), so the OS refusal is simulated.
    folder = _write(tmp_path / "in", {"a.txt": "Fine.", "locked.txt": "Secret."})
    real = Path.read_bytes

    def refuse(self: Path) -> bytes:
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(EssayInputError, match="cannot read essay: Permission denied") as err:
        load_essays(folder)
    assert err.value.path.name == "locked.txt"


def test_unreadable_path_is_an_error_naming_it(tmp_path: Path) -> None:
    # A folder where a file is expected fails to read on every platform and user.
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(EssayInputError, match="is a folder") as err:
        read_text(tmp_path / "dir.txt", "essay")
    assert err.value.path.name == "dir.txt"


def test_duplicate_ids_in_folder_name_both_files(tmp_path: Path) -> None:
    folder = _write(tmp_path / "in", {"a.txt": "One.", "a.md": "Two.", "b.txt": "Three."})
    with pytest.raises(EssayInputError, match="duplicate essay id 'a'") as err:
        load_essays(folder)
    assert "a.md" in str(err.value) and "a.txt" in str(err.value)


def test_csv_loads_with_extra_columns_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "essays.csv"
    path.write_bytes(
        b'\xef\xbb\xbfessay_id,text,author\ne1,"First essay,\nwith a newline.",x\ne2,Second.,y\n'
    )
    essays = load_essays(path)
    assert [(e.essay_id, e.text) for e in essays] == [
        ("e1", "First essay,\nwith a newline."),
        ("e2", "Second."),
    ]


def test_csv_missing_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "essays.csv"
    path.write_text("id,body\ne1,x\ne2,y\n", encoding="utf-8")
    with pytest.raises(EssayInputError, match="missing essay_id, text"):
        load_essays(path)


def test_csv_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "essays.csv"
    path.write_text("essay_id,text\ne1,x\ne2,y\ne1,z\n", encoding="utf-8")
    with pytest.raises(
        EssayInputError, match=r"essays\.csv:4: duplicate essay id 'e1' \(first on line 2\)"
    ):
        load_essays(path)


def test_csv_empty_text_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "essays.csv"
    path.write_text('essay_id,text\ne1,x\ne2," "\n', encoding="utf-8")
    with pytest.raises(EssayInputError, match=r":3: empty essay 'e2'"):
        load_essays(path)


def test_jsonl_loads_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "essays.jsonl"
    path.write_text(
        '{"essay_id": "e1", "text": "One."}\n\n{"essay_id": "e2", "text": "Two."}\n',
        encoding="utf-8",
    )
    assert [e.essay_id for e in load_essays(path)] == ["e1", "e2"]


def test_jsonl_bad_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "essays.jsonl"
    path.write_text('{"essay_id": "e1", "text": "One."}\n{"essay_id": 2, "text": "x"}\n', "utf-8")
    with pytest.raises(EssayInputError, match=r":2: 'essay_id' must be a string"):
        load_essays(path)
    path.write_text('{"essay_id": "e1", "text": "One."}\nnot json\n', "utf-8")
    with pytest.raises(EssayInputError, match=r":2: not a JSON object"):
        load_essays(path)


def test_other_file_types_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "essays.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(EssayInputError, match="expected a folder"):
        load_essays(path)


def test_anchors_need_a_grade_and_distinct_ids(tmp_path: Path) -> None:
    path = tmp_path / "anchors.csv"
    path.write_text("essay_id,text,grade\nA1,Anchor text.,B\n", encoding="utf-8")
    anchors = load_anchors(path)
    assert anchors[0].grade == "B"
    essays = load_essays(_write(tmp_path / "in", {"A1.txt": "x", "e2.txt": "y"}))
    with pytest.raises(EssayInputError, match="also an essay id"):
        check_distinct(essays, anchors, path)
    path.write_text("essay_id,text,grade\nA1,Anchor text.,\n", encoding="utf-8")
    with pytest.raises(EssayInputError, match="has no grade"):
        load_anchors(path)


def test_digest_depends_on_ids_and_texts_not_order(tmp_path: Path) -> None:
    folder = _write(tmp_path / "in", {"a.txt": "One.", "b.txt": "Two."})
    essays = load_essays(folder)
    assert essay_set_digest(essays) == essay_set_digest(list(reversed(essays)))
    (folder / "b.txt").write_text("Two!", encoding="utf-8")
    assert essay_set_digest(load_essays(folder)) != essay_set_digest(essays)


def _pdf_with_text(lines: list[str]) -> bytes:
    """A one-page PDF whose text layer holds ``lines`` (Helvetica), built by hand."""
    body = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(
        "(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") '"
        for line in lines
    )
    stream = body + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        "/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{obj}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out


def test_folder_reads_word_and_pdf_essays(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_paragraph("Schools should start later.")
    document.add_paragraph("Teenagers sleep late, and tired students learn less.")
    document.save(str(tmp_path / "word-essay.docx"))
    (tmp_path / "pdf-essay.pdf").write_bytes(
        _pdf_with_text(["Early starts help families.", "Buses cost money."])
    )
    (tmp_path / "~$word-essay.docx").write_bytes(b"Word's lock file")
    essays = {e.essay_id: e.text for e in load_essays(tmp_path)}
    assert sorted(essays) == ["pdf-essay", "word-essay"]
    assert essays["word-essay"] == (
        "Schools should start later.\nTeenagers sleep late, and tired students learn less."
    )
    assert "Early starts help families." in essays["pdf-essay"]
    assert "Buses cost money." in essays["pdf-essay"]


def test_a_pdf_without_a_text_layer_is_named(tmp_path: Path) -> None:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=612, height=792)  # what a scan looks like to a text reader
    with (tmp_path / "scanned.pdf").open("wb") as handle:
        writer.write(handle)
    (tmp_path / "fine.txt").write_text("A typed essay.", encoding="utf-8")
    with pytest.raises(EssayInputError, match="no text layer") as caught:
        load_essays(tmp_path)
    assert caught.value.path == tmp_path / "scanned.pdf"
    assert "scanned.pdf" in str(caught.value) and "OCR" in str(caught.value)


def test_a_broken_word_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.docx").write_bytes(b"not a zip at all")
    (tmp_path / "fine.txt").write_text("A typed essay.", encoding="utf-8")
    with pytest.raises(EssayInputError, match=r"broken\.docx: not a readable Word"):
        load_essays(tmp_path)
