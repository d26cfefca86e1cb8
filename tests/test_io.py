import json

import pytest

from searchr1.io import DataError, atomic_open, atomic_path, iter_jsonl, write_jsonl


def test_atomic_open_leaves_previous_file_untouched_on_failure(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temp litter


def test_atomic_path_replaces_a_directory_whole(tmp_path):
    target = tmp_path / "index"
    target.mkdir()
    (target / "stale").write_text("x")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "fresh").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["fresh"]


def test_iter_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"a": 1}) + "\n\n{broken\n")
    rows = iter_jsonl(p)
    assert next(rows) == (1, {"a": 1})
    with pytest.raises(DataError, match=r"c.jsonl:3: invalid JSON"):
        next(rows)


def test_iter_jsonl_rejects_non_objects(tmp_path):
    p = tmp_path / "c.jsonl"
    write_jsonl(p, [{"a": 1}])
    p.write_text(p.read_text() + "[1, 2]\n")
    with pytest.raises(DataError, match=r"c.jsonl:2: expected a JSON object"):
        list(iter_jsonl(p))
