"""The model card's data row: what the run read, the text field only where it selects a column, a mixture's sources."""
from __future__ import annotations

from omegaconf import OmegaConf

from trainer.export.card import data_description


def test_text_files_have_no_text_field_tables_and_datasets_do(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a document\n")
    (tmp_path / "rows.csv").write_text("id,content\n1,hello\n")
    assert data_description({"path": "stdlib", "text_field": "text"}) == "`stdlib`"
    assert data_description({"path": str(tmp_path / "docs"), "text_field": "text"}) == f"`{tmp_path / 'docs'}`"
    assert data_description({"path": str(tmp_path / "rows.csv"), "text_field": "content"}) == \
        f"`{tmp_path / 'rows.csv'}` (text field `content`)"
    hub = OmegaConf.create({"path": "HuggingFaceFW/fineweb-edu", "name": "sample-10BT", "split": "train",
                            "text_field": "text", "tokenizer": "openai-community/gpt2"})  # as the frozen config holds it
    assert data_description(hub) == "`HuggingFaceFW/fineweb-edu` (config `sample-10BT`, text field `text`)"


def test_a_mixture_shows_each_source_and_its_share(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.py").write_text("print(1)\n")
    (tmp_path / "b.jsonl").write_text('{"body": "hi"}\n')
    data = OmegaConf.create({"path": None, "text_field": "body",
                             "sources": [{"path": str(tmp_path / "a"), "weight": 3}, {"path": str(tmp_path / "b.jsonl"), "weight": 1}]})
    assert data_description(data) == (f"mixture of `{tmp_path / 'a'}` (weight 0.75); "
                                      f"`{tmp_path / 'b.jsonl'}` (text field `body`, weight 0.25)")
