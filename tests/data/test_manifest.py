"""Manifests from Kinetics CSVs, path-label lists and class folders; label maps."""

from __future__ import annotations

import json
import logging
import uuid

import fsspec
import pytest

from octvideo.data.manifest import (
    LABEL_MAP_NAME,
    Manifest,
    VideoEntry,
    derive_label_map,
    load_manifest,
    read_label_map,
    write_label_map,
)

HEADER = "label,youtube_id,time_start,time_end,split"
ROWS = [
    ("zumba", "zzzzzzzzzz1", 5, 15, "train"),
    ("abseiling", "-abc_DEF123", 0, 10, "train"),
    ("air drumming", "aaaaaaaaaa2", 112, 122, "train"),
    ("abseiling", "vvvvvvvvvv3", 30, 40, "val"),
]


def kinetics_csv(rows=ROWS, header: str = HEADER) -> str:
    return "\n".join([header] + [",".join(map(str, row)) for row in rows]) + "\n"


def video_name(row) -> str:
    label, youtube_id, start, end, split = row[:5]
    return f"{youtube_id}_{start:06d}_{end:06d}.mp4"


def put(url: str, data: bytes | str = b"not decoded", storage_options: dict | None = None) -> None:
    with fsspec.open(url, "wb", **(storage_options or {})) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def make_kinetics(root: str, layout: str = "nested", rows=ROWS, folder=str, **options) -> None:
    """Videos (placeholder bytes: manifests never decode) for every row, and train.csv."""
    for row in rows:
        label, split = row[0], row[4]
        middle = f"{folder(label)}/" if layout == "nested" else ""
        put(f"{root}/{split}/{middle}{video_name(row)}", storage_options=options)
    put(f"{root}/train.csv", kinetics_csv(rows), options)


# --- Kinetics CSV -------------------------------------------------------------------------------


def test_kinetics_nested_layout_with_sorted_label_map(tmp_path):
    make_kinetics(str(tmp_path))
    manifest = load_manifest(str(tmp_path / "train.csv"), split="train")
    assert manifest.label_map == {"abseiling": 0, "air drumming": 1, "zumba": 2}
    assert manifest.class_names == ["abseiling", "air drumming", "zumba"]
    assert manifest.num_classes == 3
    assert list(manifest) == [
        VideoEntry(f"{tmp_path}/train/zumba/zzzzzzzzzz1_000005_000015.mp4", 2, "zumba"),
        VideoEntry(f"{tmp_path}/train/abseiling/-abc_DEF123_000000_000010.mp4", 0, "abseiling"),
        VideoEntry(f"{tmp_path}/train/air drumming/aaaaaaaaaa2_000112_000122.mp4", 1, "air drumming"),
    ]


def test_kinetics_all_splits_and_entries_are_immutable(tmp_path):
    make_kinetics(str(tmp_path))
    manifest = load_manifest(str(tmp_path / "train.csv"))
    assert len(manifest) == 4
    assert manifest[3].url.endswith("/val/abseiling/vvvvvvvvvv3_000030_000040.mp4")
    with pytest.raises(AttributeError):
        manifest[0].label = 5


def test_kinetics_flat_layout_detected_or_chosen(tmp_path):
    make_kinetics(str(tmp_path), layout="flat")
    for layout in ("auto", "flat"):
        manifest = load_manifest(str(tmp_path / "train.csv"), split="train", layout=layout)
        assert [e.url for e in manifest][1] == f"{tmp_path}/train/-abc_DEF123_000000_000010.mp4"
        assert [e.class_name for e in manifest] == ["zumba", "abseiling", "air drumming"]
    with pytest.raises(ValueError, match="check root= and layout="):
        load_manifest(str(tmp_path / "train.csv"), split="train", layout="nested")


def test_kinetics_class_folders_with_underscores_for_spaces(tmp_path):
    make_kinetics(str(tmp_path), folder=lambda label: label.replace(" ", "_"))
    manifest = load_manifest(str(tmp_path / "train.csv"), split="train")
    assert manifest[2].url == f"{tmp_path}/train/air_drumming/aaaaaaaaaa2_000112_000122.mp4"
    assert manifest[2].class_name == "air drumming"


def test_kinetics_csv_elsewhere_with_root_and_other_extensions(tmp_path):
    root = tmp_path / "videos"
    rows = ROWS[:2]
    put(f"{root}/train/zumba/zzzzzzzzzz1_000005_000015.webm")
    put(f"{root}/train/abseiling/-abc_DEF123_000000_000010.mkv")
    put(f"{root}/train/abseiling/-abc_DEF123_000000_000010.mp4")
    put(f"{root}/train/abseiling/notes.txt")
    with_is_cc = kinetics_csv(rows, HEADER + ",is_cc").replace("train\n", "train,0\n")
    put(f"{tmp_path}/annotations/train.csv", with_is_cc)
    manifest = load_manifest(str(tmp_path / "annotations/train.csv"), root=str(root))
    assert [e.url.rsplit("/", 1)[1] for e in manifest] == [
        "zzzzzzzzzz1_000005_000015.webm",
        "-abc_DEF123_000000_000010.mp4",
    ]


def test_kinetics_missing_videos_are_skipped_with_a_warning(tmp_path, caplog):
    make_kinetics(str(tmp_path))
    fsspec.filesystem("file").rm(f"{tmp_path}/train/zumba/{video_name(ROWS[0])}")
    with caplog.at_level(logging.WARNING):
        manifest = load_manifest(str(tmp_path / "train.csv"), split="train")
    assert [e.class_name for e in manifest] == ["abseiling", "air drumming"]
    assert manifest.label_map["zumba"] == 2  # the label map still covers every class
    assert "1 of 3 'train' videos" in caplog.text


def test_kinetics_wrong_root_is_an_error(tmp_path):
    make_kinetics(str(tmp_path))
    with pytest.raises(ValueError, match="no videos under .*elsewhere/train.*pass root="):
        load_manifest(str(tmp_path / "train.csv"), root=str(tmp_path / "elsewhere"))


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("label,youtube_id,time_start,split\nzumba,x,1,train\n", r"train.csv: header lacks column\(s\) time_end"),
        (HEADER + "\nzumba,x,1,11\n", r"train.csv line 2: expected 5 columns"),
        (HEADER + "\nzumba,x,1,11,train\nzumba,y,1,11,train,extra\n", r"train.csv line 3: expected 5 columns"),
        (HEADER + "\nzumba,x,one,11,train\n", r"train.csv line 2: time_start must be an integer, got 'one'"),
        (HEADER + "\nzumba,x,1,11,train\nzumba,y,1,1.5,train\n", r"line 3: time_end must be an integer"),
        (HEADER + "\nzumba,x,1,11,validate\n", r"line 2: unknown split 'validate'; expected one of train, val, test"),
        (HEADER + "\nzumba,x,12,11,train\n", r"line 2: need 0 <= time_start < time_end"),
        (HEADER + "\n,x,1,11,train\n", r"line 2: empty label"),
        (HEADER + "\n", r"train.csv has no rows"),
    ],
)
def test_kinetics_malformed_csv_names_file_and_line(tmp_path, csv_text, message):
    put(f"{tmp_path}/train.csv", csv_text)
    with pytest.raises(ValueError, match=message):
        load_manifest(str(tmp_path / "train.csv"))


def test_kinetics_split_argument_errors(tmp_path):
    make_kinetics(str(tmp_path))
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_manifest(str(tmp_path / "train.csv"), split="dev")
    with pytest.raises(ValueError, match="has no rows of split 'test'"):
        load_manifest(str(tmp_path / "train.csv"), split="test")


def test_quoted_labels_with_commas(tmp_path):
    rows = [('"passing American football (in game, 2)"', "qqqqqqqqqq1", 0, 10, "train")]
    put(f"{tmp_path}/train/passing American football (in game, 2)/{video_name(rows[0])}")
    put(f"{tmp_path}/train.csv", kinetics_csv(rows))
    manifest = load_manifest(str(tmp_path / "train.csv"))
    assert manifest[0].class_name == "passing American football (in game, 2)"


# --- label maps ---------------------------------------------------------------------------------


def test_label_map_round_trip_and_file_format(tmp_path):
    mapping = {"b": 1, "a": 2, "c": 0}
    write_label_map(str(tmp_path / LABEL_MAP_NAME), mapping)
    assert read_label_map(str(tmp_path / LABEL_MAP_NAME)) == mapping
    text = (tmp_path / LABEL_MAP_NAME).read_text()
    assert list(json.loads(text)) == ["c", "b", "a"]  # written in index order
    assert derive_label_map(["b", "a", "b", "c"]) == {"a": 0, "b": 1, "c": 2}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('["a", "b"]', "must be a JSON object"),
        ('{"a": 0, "b": 2}', r"indices must be 0\.\.1, each used once"),
        ('{"a": 0, "b": 0}', r"indices must be 0\.\.1"),
        ('{"a": "0"}', "index of class 'a' must be an integer"),
        ('{"a": true}', "index of class 'a' must be an integer"),
    ],
)
def test_bad_label_map_file_is_named(tmp_path, content, message):
    put(f"{tmp_path}/{LABEL_MAP_NAME}", content)
    with pytest.raises(ValueError, match=f"{LABEL_MAP_NAME}.*{message}"):
        read_label_map(str(tmp_path / LABEL_MAP_NAME))


def test_label_map_next_to_the_data_wins(tmp_path):
    make_kinetics(str(tmp_path))
    stored = {"zumba": 0, "air drumming": 1, "abseiling": 2, "yoga": 3}
    write_label_map(str(tmp_path / LABEL_MAP_NAME), stored)
    manifest = load_manifest(str(tmp_path / "train.csv"), split="train")
    assert manifest.label_map == stored
    assert [e.label for e in manifest] == [0, 2, 1]
    assert manifest.num_classes == 4


def test_given_label_map_overrides_and_unknown_class_is_named(tmp_path):
    make_kinetics(str(tmp_path))
    write_label_map(str(tmp_path / LABEL_MAP_NAME), {"zumba": 0, "air drumming": 1, "abseiling": 2})
    run_map = str(tmp_path / "run" / LABEL_MAP_NAME)
    write_label_map(run_map, {"abseiling": 0, "zumba": 1, "air drumming": 2})
    assert [e.label for e in load_manifest(str(tmp_path / "train.csv"), label_map=run_map)][:3] == [1, 0, 2]
    with pytest.raises(ValueError, match="train.csv line 3: class 'abseiling' is not in the given label map"):
        load_manifest(str(tmp_path / "train.csv"), label_map={"zumba": 0, "air drumming": 1})
    write_label_map(run_map, {"zumba": 0, "air drumming": 1})
    with pytest.raises(ValueError, match=rf"class 'abseiling' is not in label map {run_map}"):
        load_manifest(str(tmp_path / "train.csv"), label_map=run_map)


# --- path-label lists ---------------------------------------------------------------------------


def test_path_label_list_relative_absolute_and_spaces(tmp_path):
    put(
        f"{tmp_path}/lists/train.txt",
        "a/x.mp4 0\n\n  b c/y y.mp4   2  \ns3://bucket/k/z.mp4 1\n/data/abs.mp4 0\n",
    )
    manifest = load_manifest(str(tmp_path / "lists/train.txt"), root="memory://kinetics/")
    assert list(manifest) == [
        VideoEntry("memory://kinetics/a/x.mp4", 0),
        VideoEntry("memory://kinetics/b c/y y.mp4", 2),
        VideoEntry("s3://bucket/k/z.mp4", 1),
        VideoEntry("/data/abs.mp4", 0),
    ]
    assert manifest.label_map is None and manifest.class_names is None
    assert manifest.num_classes == 3


def test_pyslowfast_csv_list_defaults_to_its_folder_and_uses_label_map(tmp_path):
    put(f"{tmp_path}/train.csv", "train/a/1.mp4 1\ntrain/b/2.mp4 0\n")
    write_label_map(str(tmp_path / LABEL_MAP_NAME), {"b": 0, "a": 1})
    manifest = load_manifest(str(tmp_path / "train.csv"))
    assert list(manifest) == [
        VideoEntry(f"{tmp_path}/train/a/1.mp4", 1, "a"),
        VideoEntry(f"{tmp_path}/train/b/2.mp4", 0, "b"),
    ]
    put(f"{tmp_path}/val.csv", "val/a/1.mp4 1\nval/c/3.mp4 2\n")
    message = rf"val.csv line 2: label 2 is not an index of label map .*{LABEL_MAP_NAME} \(0\.\.1\)"
    with pytest.raises(ValueError, match=message):
        load_manifest(str(tmp_path / "val.csv"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.mp4 0\nb.mp4\n", r"train.txt line 2: expected 'path label', got 'b.mp4'"),
        ("a.mp4 zero\n", r"train.txt line 1: label must be an integer, got 'zero'"),
        ("a.mp4 -1\n", r"train.txt line 1: label must be >= 0"),
        ("\n\n", "train.txt lists no videos"),
    ],
)
def test_malformed_list_names_file_and_line(tmp_path, text, message):
    put(f"{tmp_path}/train.txt", text)
    with pytest.raises(ValueError, match=message):
        load_manifest(str(tmp_path / "train.txt"))


def test_list_has_no_split(tmp_path):
    put(f"{tmp_path}/train.txt", "a.mp4 0\n")
    with pytest.raises(ValueError, match="has no splits"):
        load_manifest(str(tmp_path / "train.txt"), split="train")


# --- class-folder trees -------------------------------------------------------------------------


def test_class_folder_tree(tmp_path):
    for name in ("b/2.webm", "b/1.mp4", "a/3.avi", "a/4.MKV", "a/deeper/5.mp4", "a/readme.txt", "loose.mp4"):
        put(f"{tmp_path}/tree/{name}")
    manifest = load_manifest(str(tmp_path / "tree"))
    assert manifest.label_map == {"a": 0, "b": 1}
    assert [(e.url.removeprefix(f"{tmp_path}/tree/"), e.label) for e in manifest] == [
        ("a/3.avi", 0), ("a/4.MKV", 0), ("b/1.mp4", 1), ("b/2.webm", 1),
    ]


def test_class_folder_tree_with_split_and_label_map(tmp_path):
    put(f"{tmp_path}/train/x/1.mp4")
    put(f"{tmp_path}/val/y/1.mp4")
    write_label_map(str(tmp_path / LABEL_MAP_NAME), {"y": 0, "x": 1})
    assert list(load_manifest(str(tmp_path), split="val")) == [VideoEntry(f"{tmp_path}/val/y/1.mp4", 0, "y")]
    write_label_map(str(tmp_path / LABEL_MAP_NAME), {"x": 0})
    with pytest.raises(ValueError, match=rf"class folder '.*/val/y' is not in label map .*{LABEL_MAP_NAME}"):
        load_manifest(str(tmp_path), split="val")
    with pytest.raises(ValueError, match="split folder .*/test does not exist"):
        load_manifest(str(tmp_path), split="test")
    with pytest.raises(ValueError, match="root= applies to CSV and list manifests"):
        load_manifest(str(tmp_path), root=str(tmp_path))


def test_empty_tree_and_missing_manifest(tmp_path):
    put(f"{tmp_path}/tree/a/readme.txt")
    with pytest.raises(ValueError, match="no class folders with videos"):
        load_manifest(str(tmp_path / "tree"))
    with pytest.raises(ValueError, match="nothing.csv does not exist"):
        load_manifest(str(tmp_path / "nothing.csv"))


# --- URLs ---------------------------------------------------------------------------------------


def test_relative_local_paths_become_absolute(tmp_path, monkeypatch):
    make_kinetics(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    manifest = load_manifest("train.csv", split="val")
    assert manifest[0].url == f"{tmp_path}/val/abseiling/vvvvvvvvvv3_000030_000040.mp4"


def test_file_url(tmp_path):
    make_kinetics(str(tmp_path))
    manifest = load_manifest(f"file://{tmp_path}/train.csv", split="val")
    assert manifest[0].url == f"file://{tmp_path}/val/abseiling/vvvvvvvvvv3_000030_000040.mp4"


def test_memory_filesystem():
    root = f"memory://manifest-{uuid.uuid4().hex}"
    make_kinetics(root, layout="flat")
    manifest = load_manifest(f"{root}/train.csv", split="train")
    assert manifest[0].url == f"{root}/train/zzzzzzzzzz1_000005_000015.mp4"
    with fsspec.open(manifest[0].url, "rb") as f:
        assert f.read() == b"not decoded"


def test_s3_csv_tree_and_label_map(s3_server, s3_bucket):
    options = s3_server.storage_options
    root = f"s3://{s3_bucket}/kinetics"
    make_kinetics(root, **options)
    write_label_map(f"{root}/{LABEL_MAP_NAME}", {"zumba": 0, "air drumming": 1, "abseiling": 2}, options)
    manifest = load_manifest(f"{root}/train.csv", split="train", storage_options=options)
    assert isinstance(manifest, Manifest)
    assert [(e.url, e.label) for e in manifest][2] == (
        f"{root}/train/air drumming/aaaaaaaaaa2_000112_000122.mp4", 1,
    )
    tree = load_manifest(f"{root}/train/", storage_options=options)
    assert {(e.class_name, e.label) for e in tree} == {("abseiling", 0), ("air drumming", 1), ("zumba", 2)}
