"""The reference pages are the code's own: each committed page == the generator's output."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

from orchestrator import docs_reference


@pytest.fixture(scope="module")
def pages() -> dict:
    """Rendered once for the module: walking the schemas and importing protocols/ is the cost."""
    return docs_reference.pages()


def test_the_committed_reference_pages_are_what_the_code_writes(pages) -> None:
    for path, text in pages.items():
        assert path.read_text() == text, f"{path} is stale: run `python -m orchestrator.docs_reference` and commit it"


def test_every_registered_message_has_its_entry(pages) -> None:
    page = pages[docs_reference.MESSAGES_PAGE]
    for msg_type, cls in docs_reference.parleys_messages().items():
        assert f"### `{msg_type}`" in page and f"`{cls.__name__}`" in page, msg_type
    assert len(docs_reference.parleys_messages()) > 40  # (every module of protocols/ registered its own)


def test_every_top_level_section_has_its_heading(pages) -> None:
    page = pages[docs_reference.PAGE]
    for key in docs_reference.RunConfig.model_fields:
        assert f"## `{key}" in page, key


class _Toy(BaseModel):
    """A toy section."""

    # Above, line one;
    # line two.
    above: int = Field(3, ge=1)
    trailing: str = "x"  # at the end # of the line
    below: bool = False
    """Below it."""
    described: float = Field(0.5, description="From the field.")  # not this one
    bare: list[int] | None = None


def test_a_field_s_reason_comes_from_its_description_comments_or_the_string_below() -> None:
    comments = docs_reference._field_comments(_Toy)
    assert comments["above"] == "Above, line one; line two."
    assert comments["trailing"] == "at the end # of the line"
    assert comments["below"] == "Below it."
    assert "bare" not in comments
    fields = _Toy.model_fields
    assert docs_reference._reason("described", fields["described"], comments) == "From the field."
    assert docs_reference._bounds_text(fields["above"]) == "≥ 1"
    assert docs_reference._default_text(fields["bare"]) == "`null`"
    assert docs_reference._type_text(fields["bare"].annotation, {}) == "list of (integer) or null"


def test_check_reports_a_stale_page(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(docs_reference, "pages", lambda: {docs_reference.PAGE: "the schemas' page\n"})
    (tmp_path / "config.md").write_text("old\n")
    assert docs_reference.main(["--check", "--out", str(tmp_path)]) == 1
    assert docs_reference.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "config.md").read_text() == "the schemas' page\n"
    assert docs_reference.main(["--check", "--out", str(tmp_path)]) == 0
