"""Corpus preparation: valid rows become canonical {id, contents}; bad rows fail loudly and write nothing."""

import json
from pathlib import Path

import pytest

from searchr1.config import CorpusConfig
from searchr1.data.corpus import prepare_corpus
from searchr1.io import DataError, file_sha256

FIXTURES = Path(__file__).parent / "fixtures" / "corpus"


def _cfg(tmp_path, name, **kw):
    return CorpusConfig(source="jsonl", path=str(FIXTURES / name), out_path=str(tmp_path / "out" / "corpus.jsonl"),
                        stats_path=str(tmp_path / "out" / "stats.json"), **kw)


def test_good_file_is_normalised_with_stats(tmp_path):
    cfg = _cfg(tmp_path, "good.jsonl")
    stats = prepare_corpus(cfg)
    rows = [json.loads(line) for line in Path(cfg.out_path).read_text().splitlines()]
    assert [r["id"] for r in rows] == ["1", "2", "3", "4"]  # int id 2 became "2"
    assert all(set(r) == {"id", "contents"} for r in rows)
    assert rows[1]["contents"] == '"Anton Brel"\nAnton Brel was a composer born in Lindmoor.'  # title + text
    assert stats["num_passages"] == 4 and stats["mean_words"] > 5
    assert stats["sha256"] == file_sha256(cfg.out_path)
    assert json.loads(Path(cfg.stats_path).read_text()) == stats


def test_max_passages_truncates(tmp_path):
    cfg = _cfg(tmp_path, "good.jsonl", max_passages=2)
    assert prepare_corpus(cfg)["num_passages"] == 2
    assert len(Path(cfg.out_path).read_text().splitlines()) == 2


def test_world_source_reads_the_generated_corpus(tmp_path):
    world = tmp_path / "world"
    world.mkdir()
    (world / "corpus.jsonl").write_text((FIXTURES / "good.jsonl").read_text())
    cfg = CorpusConfig(out_path=str(tmp_path / "c.jsonl"), stats_path=str(tmp_path / "s.json"))
    assert prepare_corpus(cfg, world_dir=world)["num_passages"] == 4


@pytest.mark.parametrize("name, line, field", [
    ("bad_json.jsonl", 3, "invalid JSON"),
    ("missing_contents.jsonl", 2, "contents"),
    ("empty_contents.jsonl", 4, "contents: empty"),
    ("duplicate_id.jsonl", 3, "id: duplicate"),
])
def test_bad_row_names_file_line_field_and_leaves_previous_output(tmp_path, name, line, field):
    cfg = _cfg(tmp_path, name)
    out = Path(cfg.out_path)
    out.parent.mkdir()
    out.write_text("previous output\n")
    with pytest.raises(DataError) as err:
        prepare_corpus(cfg)
    assert f"{name}:{line}:" in str(err.value) and field in str(err.value)
    assert out.read_text() == "previous output\n"
    assert not Path(cfg.stats_path).exists()
    assert [p.name for p in out.parent.iterdir()] == ["corpus.jsonl"]  # no temporary left behind


def test_bad_file_creates_no_output(tmp_path):
    cfg = _cfg(tmp_path, "duplicate_id.jsonl")
    with pytest.raises(DataError):
        prepare_corpus(cfg)
    assert not Path(cfg.out_path).exists()


def test_missing_path_for_jsonl_source_is_an_error(tmp_path):
    with pytest.raises(DataError, match="corpus.path"):
        prepare_corpus(CorpusConfig(source="jsonl", out_path=str(tmp_path / "c.jsonl")))
