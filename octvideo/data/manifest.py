"""Video manifests (which videos, which class) and the label map that fixes class indices.

Three sources are read, all through fsspec:

* the official Kinetics CSV (``label,youtube_id,time_start,time_end,split[,is_cc]``) with the videos
  under ``{root}/{split}/{label}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4`` (``nested``; class
  folders named as the label or with its spaces as underscores; .webm / .mkv / .avi also found) or
  ``{root}/{split}/{...}.mp4`` (``flat``);
* ``path label`` lists (PySlowFast, pytorchvideo, MMAction2), whatever their extension;
* one folder per class: ``{root}/{class}/*.mp4|webm|mkv|avi``.

The label map (class name -> index) is sorted class names unless a ``label_map.json`` lies in the
dataset root or one is passed in: training, evaluation and prediction must all use the same one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import posixpath
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import fsspec
from fsspec.core import split_protocol

from octvideo.data.storage import filesystem

logger = logging.getLogger(__name__)

LABEL_MAP_NAME = "label_map.json"
_ANNOUNCED: set[str] = set()  # label maps this process said it uses
KINETICS_SPLITS = ("train", "val", "test")
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi")

Layout = Literal["auto", "nested", "flat"]


@dataclass(frozen=True)
class VideoEntry:
    """One video: its URL (same protocol as the manifest), class index, and class name if known."""

    url: str
    label: int
    class_name: str | None = None


@dataclass(frozen=True)
class Manifest:
    """The videos of a dataset (or one split of it) and the label map their indices refer to.

    ``label_map`` is None only for a ``path label`` list with no label map next to it: then the
    indices have no names and ``num_classes`` is inferred from the largest index.
    """

    entries: tuple[VideoEntry, ...]
    label_map: dict[str, int] | None
    missing: tuple[str, ...] = ()  # URLs of videos a Kinetics CSV lists that have no file (skipped)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[VideoEntry]:
        return iter(self.entries)

    def __getitem__(self, index: int) -> VideoEntry:
        return self.entries[index]

    @property
    def num_classes(self) -> int:
        if self.label_map is not None:
            return len(self.label_map)
        return max((entry.label for entry in self.entries), default=-1) + 1

    @property
    def class_names(self) -> list[str] | None:
        """Class names in index order, or None when the labels are bare indices."""
        if self.label_map is None:
            return None
        return sorted(self.label_map, key=self.label_map.__getitem__)


def derive_label_map(class_names: Iterable[str]) -> dict[str, int]:
    """Sorted class names -> 0..n-1, the convention PySlowFast uses for Kinetics."""
    return {name: index for index, name in enumerate(sorted(set(class_names)))}


def write_label_map(
    url: str, mapping: Mapping[str, int], storage_options: Mapping | None = None
) -> None:
    """Write ``mapping`` as a JSON object (class name -> index), in index order."""
    _check_label_map(mapping, url)
    ordered = dict(sorted(mapping.items(), key=lambda item: item[1]))
    with fsspec.open(url, "w", encoding="utf-8", **(storage_options or {})) as f:
        json.dump(ordered, f, indent=2, ensure_ascii=False)
        f.write("\n")


def read_label_map(url: str, storage_options: Mapping | None = None) -> dict[str, int]:
    """Read a label map written by ``write_label_map`` and check it is a bijection onto 0..n-1."""
    fs, path = filesystem(url, storage_options)
    with fs.open(path, "r", encoding="utf-8") as f:
        try:
            mapping = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"label map {url} is not valid JSON: {error}") from error
    if not isinstance(mapping, dict):
        raise ValueError(f"label map {url} must be a JSON object of class name -> index")
    _check_label_map(mapping, url)
    return mapping


def load_manifest(
    url: str,
    root: str | None = None,
    split: str | None = None,
    storage_options: Mapping | None = None,
    *,
    label_map: Mapping[str, int] | str | None = None,
    layout: Layout = "auto",
) -> Manifest:
    """Read a Kinetics CSV, a ``path label`` list or a class-folder tree into a Manifest.

    ``root`` is the dataset root: where the split folders (CSV) or relative paths (lists) start and
    where ``label_map.json`` is looked for; it defaults to the manifest's folder (or the tree itself).
    ``split`` keeps only that split's CSV rows, or reads the tree under ``{url}/{split}``.
    ``label_map`` (a mapping or its JSON URL) overrides the one found next to the data.
    ``layout`` is where Kinetics videos lie: ``nested`` in class folders, ``flat`` directly in the
    split folder, or ``auto`` to look. Kinetics videos absent from storage are skipped with a warning
    (downloads always miss some); none found at all is an error.
    """
    options = dict(storage_options or {})
    url = _absolute(url.rstrip("/"))
    fs, path = filesystem(url, options)
    if fs.isdir(path):
        if root is not None:
            raise ValueError(f"root= applies to CSV and list manifests; {url} is a folder tree")
        return _load_tree(fs, url, split, options, label_map)
    if not fs.isfile(path):
        raise ValueError(f"manifest {url} does not exist; check the URL and storage_options")
    root = _absolute(root.rstrip("/")) if root is not None else _parent(url)
    text = fs.cat_file(path).decode("utf-8-sig")
    if _is_kinetics_csv(text):
        return _load_kinetics(text, url, root, split, options, label_map, layout)
    if split is not None:
        raise ValueError(f"{url} is a 'path label' list, which has no splits; drop split={split!r}")
    return _load_list(text, url, root, options, label_map)


def _load_kinetics(
    text: str,
    url: str,
    root: str,
    split: str | None,
    options: dict,
    label_map: Mapping[str, int] | str | None,
    layout: Layout,
) -> Manifest:
    if split is not None and split not in KINETICS_SPLITS:
        raise ValueError(f"unknown split {split!r}; Kinetics splits are {', '.join(KINETICS_SPLITS)}")
    if layout not in ("auto", "nested", "flat"):
        raise ValueError(f"unknown layout {layout!r}; use 'auto', 'nested' or 'flat'")
    rows = _parse_kinetics_csv(text, url)
    mapping, map_source = _resolve_label_map(label_map, root, options)
    if mapping is None:
        mapping, map_source = derive_label_map(row.label for row in rows), f"the classes of {url}"
    wanted = [row for row in rows if split is None or row.split == split]
    if not wanted:
        raise ValueError(f"{url} has no rows" + (f" of split {split!r}" if split is not None else ""))
    entries, missing = [], []
    for split_name in KINETICS_SPLITS:
        split_rows = [row for row in wanted if row.split == split_name]
        if not split_rows:
            continue
        found, absent = _locate_kinetics_videos(
            url, root, split_name, split_rows, layout, mapping, map_source, options
        )
        entries += found
        missing += absent
    return Manifest(tuple(entries), mapping, tuple(missing))


@dataclass(frozen=True)
class _KineticsRow:
    line: int
    label: str
    stem: str
    split: str


def _parse_kinetics_csv(text: str, url: str) -> list[_KineticsRow]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or ()]
    reader.fieldnames = header
    missing = [name for name in KINETICS_COLUMNS if name not in header]
    if missing:
        raise ValueError(
            f"{url}: header lacks column(s) {', '.join(missing)}; "
            f"expected {','.join(KINETICS_COLUMNS)}[,is_cc]"
        )
    rows = []
    for record in reader:
        where = f"{url} line {reader.line_num}"
        if None in record or any(record[name] is None for name in header):
            raise ValueError(f"{where}: expected {len(header)} columns ({','.join(header)})")
        values = {name: record[name].strip() for name in KINETICS_COLUMNS}
        for name in ("label", "youtube_id"):
            if not values[name]:
                raise ValueError(f"{where}: empty {name}")
        start = _parse_int(values["time_start"], "time_start", where)
        end = _parse_int(values["time_end"], "time_end", where)
        if start < 0 or end <= start:
            raise ValueError(f"{where}: need 0 <= time_start < time_end, got {start} and {end}")
        if values["split"] not in KINETICS_SPLITS:
            expected = ", ".join(KINETICS_SPLITS)
            raise ValueError(f"{where}: unknown split {values['split']!r}; expected one of {expected}")
        stem = f"{values['youtube_id']}_{start:06d}_{end:06d}"
        rows.append(_KineticsRow(reader.line_num, values["label"], stem, values["split"]))
    return rows


def _locate_kinetics_videos(
    url: str,
    root: str,
    split: str,
    rows: list[_KineticsRow],
    layout: Layout,
    mapping: Mapping[str, int],
    map_source: str,
    options: dict,
) -> tuple[list[VideoEntry], list[str]]:
    """Match CSV rows to the files under ``{root}/{split}`` (one listing, whatever the size):
    the videos found, and the URLs (``.mp4``) of those missing."""
    split_url = _join(root, split)
    found = _list_videos(split_url, options)
    if not found:
        raise ValueError(
            f"no videos under {split_url} for the {split!r} rows of {url}; "
            "pass root= the folder that holds the split folders"
        )
    if layout == "auto":
        layout = "nested" if any("/" in stem for stem in found) else "flat"
    folders = {stem.split("/", 1)[0] for stem in found if "/" in stem}
    entries, missing = [], []
    for row in rows:
        if row.label not in mapping:
            raise ValueError(f"{url} line {row.line}: class {row.label!r} is not in {map_source}")
        if layout == "nested":
            folder = row.label
            if folder not in folders and row.label.replace(" ", "_") in folders:
                folder = row.label.replace(" ", "_")
            stem = f"{folder}/{row.stem}"
        else:
            stem = row.stem
        if stem in found:
            entries.append(VideoEntry(_join(split_url, found[stem]), mapping[row.label], row.label))
        else:
            missing.append(stem)
    if not entries:
        raise ValueError(
            f"none of the {len(rows)} {split!r} videos of {url} is under {split_url} "
            f"(looked for e.g. {missing[0]}.mp4 with layout {layout!r}); check root= and layout="
        )
    if missing:
        logger.warning(
            "%d of %d %r videos listed in %s are missing under %s (e.g. %s); skipping them",
            len(missing), len(rows), split, url, split_url, missing[0],
        )
    return entries, [_join(split_url, f"{stem}.mp4") for stem in missing]


def _list_videos(folder_url: str, options: dict) -> dict[str, str]:
    """Video files under a folder: relative path without extension -> relative path (.mp4 wins)."""
    fs, base = filesystem(folder_url, options)
    base = base.rstrip("/")
    found: dict[str, str] = {}
    for path in fs.find(base):
        relative = path[len(base):].lstrip("/")
        stem, extension = posixpath.splitext(relative)
        if extension.lower() in VIDEO_EXTENSIONS and (stem not in found or extension == ".mp4"):
            found[stem] = relative
    return found


def _load_list(
    text: str, url: str, root: str, options: dict, label_map: Mapping[str, int] | str | None
) -> Manifest:
    mapping, map_source = _resolve_label_map(label_map, root, options)
    names = {index: name for name, index in mapping.items()} if mapping is not None else None
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{url} line {number}"
        parts = line.strip().rsplit(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{where}: expected 'path label', got {line.strip()!r}")
        path, label_text = parts
        label = _parse_int(label_text, "label", where)
        if label < 0:
            raise ValueError(f"{where}: label must be >= 0, got {label}")
        if names is not None and label not in names:
            raise ValueError(
                f"{where}: label {label} is not an index of {map_source} (0..{len(names) - 1})"
            )
        video_url = path if "://" in path or path.startswith("/") else _join(root, path)
        entries.append(VideoEntry(video_url, label, names[label] if names is not None else None))
    if not entries:
        raise ValueError(f"{url} lists no videos")
    return Manifest(tuple(entries), mapping)


def _load_tree(
    fs: fsspec.AbstractFileSystem,
    url: str,
    split: str | None,
    options: dict,
    label_map: Mapping[str, int] | str | None,
) -> Manifest:
    base = _join(url, split) if split is not None else url
    if split is not None and not fs.isdir(filesystem(base, options)[1]):
        raise ValueError(f"split folder {base} does not exist")
    videos = sorted(
        relative for relative in _list_videos(base, options).values() if relative.count("/") == 1
    )
    if not videos:
        raise ValueError(f"no class folders with videos ({', '.join(VIDEO_EXTENSIONS)}) under {base}")
    mapping, map_source = _resolve_label_map(label_map, url, options)
    if mapping is None:
        mapping = derive_label_map(video.split("/", 1)[0] for video in videos)
        map_source = f"the folders of {base}"
    entries = []
    for relative in videos:
        class_name = relative.split("/", 1)[0]
        if class_name not in mapping:
            raise ValueError(f"class folder {_join(base, class_name)!r} is not in {map_source}")
        entries.append(VideoEntry(_join(base, relative), mapping[class_name], class_name))
    return Manifest(tuple(entries), mapping)


def _resolve_label_map(
    label_map: Mapping[str, int] | str | None, root: str, options: dict
) -> tuple[dict[str, int] | None, str]:
    """The label map to use and a phrase naming where it came from, for error messages."""
    if isinstance(label_map, str):
        return read_label_map(label_map, options), f"label map {label_map}"
    if label_map is not None:
        _check_label_map(label_map, "the given label map")
        return dict(label_map), "the given label map"
    beside = _join(root, LABEL_MAP_NAME)
    fs, path = filesystem(beside, options)
    if fs.isfile(path):
        if beside not in _ANNOUNCED:  # a job reads its three splits' manifests: one line, not three
            _ANNOUNCED.add(beside)
            logger.info("using label map %s", beside)
        return read_label_map(beside, options), f"label map {beside}"
    return None, ""


def _check_label_map(mapping: Mapping[str, int], source: str) -> None:
    for name, index in mapping.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{source}: class names must be non-empty strings, got {name!r}")
        if not isinstance(index, int) or isinstance(index, bool):
            raise ValueError(f"{source}: index of class {name!r} must be an integer, got {index!r}")
    if sorted(mapping.values()) != list(range(len(mapping))):
        raise ValueError(f"{source}: indices must be 0..{len(mapping) - 1}, each used once")


def _is_kinetics_csv(text: str) -> bool:
    first = next((line for line in text.splitlines() if line.strip()), "")
    return "youtube_id" in (column.strip() for column in first.split(","))


def _parse_int(text: str, column: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{where}: {column} must be an integer, got {text!r}") from None  # int()'s error says less


def _absolute(url: str) -> str:
    """Local paths become absolute, so entries stay valid in workers with another cwd."""
    return url if split_protocol(url)[0] is not None else os.path.abspath(url)


def _parent(url: str) -> str:
    protocol, path = split_protocol(url)
    parent = posixpath.dirname(path.rstrip("/"))
    return f"{protocol}://{parent}" if protocol is not None else parent


def _join(base: str, relative: str) -> str:
    return base + relative if base.endswith("/") else f"{base}/{relative}"
