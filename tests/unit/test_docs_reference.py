"""The config reference page is the schemas' own: committed page == generator output."""

from __future__ import annotations

from pydantic import BaseModel, Field

from orchestrator import docs_reference


def test_the_committed_config_reference_is_what_the_schemas_write() -> None:
    committed = docs_reference.PAGE.read_text()
    assert committed == docs_reference.render(), (
        "docs/reference/config.md is stale: run `python -m orchestrator.docs_reference` and commit it"
    )


def test_every_top_level_section_has_its_heading() -> None:
    page = docs_reference.render()
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
    monkeypatch.setattr(docs_reference, "render", lambda: "the schemas' page\n")
    page = tmp_path / "config.md"
    page.write_text("old\n")
    assert docs_reference.main(["--check", "--out", str(page)]) == 1
    assert docs_reference.main(["--out", str(page)]) == 0
    assert docs_reference.main(["--check", "--out", str(page)]) == 0
