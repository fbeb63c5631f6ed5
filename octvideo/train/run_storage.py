"""The run's storage as Ray Train sees it: a folder, or an fsspec URL wrapped as a pyarrow
filesystem whose every call retries through storage outages (:func:`run_storage`), and the
checkpoint upload that goes through fsspec instead of Ray's own copy (:func:`upload_checkpoint`);
and the name of the exported weights in the run's folder (:data:`WEIGHTS_FILE`).

A module of its own, light to import: Ray Train's controller unpickles the storage filesystem
of the ``RunConfig``, and so imports the module that defines it. Defined in the training loop,
it made every job's controller import the loop, its dataset and torchvision: 3.3 s more of
imports at each job's start on a 2-vCPU AMD EPYC (AVX2).
"""

from __future__ import annotations

import errno
import functools
import io
import os
from collections.abc import Mapping
from typing import Any

import fsspec
import pyarrow
import pyarrow.fs
import ray.train

from octvideo.data.storage import (
    RetryPolicy,
    bounded_storage_options,
    filesystem,
    retry_call,
    retry_storage_call,
    upload_deadline_s,
    with_deadline,
)

#: The exported fp32 weights, in the run's folder.
WEIGHTS_FILE = "model_fp32.pt"


def upload_checkpoint(checkpoint: ray.train.Checkpoint, checkpoint_dir_name: str, retry: RetryPolicy) -> ray.train.Checkpoint:
    """Ray Train's ``checkpoint_upload_fn``: copy this rank's files of ``checkpoint`` (a local
    folder) to the run's storage through fsspec, retrying transient errors under ``retry``,
    then check that every file arrived whole.

    Not Ray's default copy: through a pyarrow-wrapped fsspec filesystem, ``pyarrow.fs.copy_files``
    drops the error of a failed upload when the file is closed (seen with s3fs and the S3 server
    down), and the checkpoint would be registered without its files."""
    storage = ray.train.get_context().get_storage()
    destination = storage.build_checkpoint_path_from_name(checkpoint_dir_name)
    fs = _fsspec_filesystem(storage.storage_filesystem)
    sizes = {
        os.path.relpath(os.path.join(folder, name), checkpoint.path): os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(checkpoint.path) for name in names
    }

    def copy() -> None:
        deadline_s = upload_deadline_s(sum(sizes.values()), retry.max_total_sec)
        with_deadline(fs, deadline_s, fs.put, checkpoint.path.rstrip("/") + "/", destination, recursive=True)
        fs.invalidate_cache(destination)
        found = {os.path.relpath(path, destination): info["size"] for path, info in fs.find(destination, detail=True).items()}
        missing = sorted(name for name, size in sizes.items() if found.get(name) != size)
        if missing:
            raise OSError(errno.EIO, f"checkpoint files missing or short after upload to {destination}: {missing}")

    retry_storage_call(copy, retry, f"uploading checkpoint {destination}")
    return ray.train.Checkpoint(destination, filesystem=storage.storage_filesystem)


def _fsspec_filesystem(filesystem: pyarrow.fs.FileSystem) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem under a storage filesystem made by :func:`run_storage`."""
    if isinstance(filesystem, pyarrow.fs.PyFileSystem) and isinstance(filesystem.handler, pyarrow.fs.FSSpecHandler):
        return filesystem.handler.fs
    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        return fsspec.filesystem("file")
    raise TypeError(f"checkpoint storage on {filesystem.type_name!r} is not supported; use a folder or an fsspec URL")


def run_storage(
    storage_path: str, storage_options: Mapping[str, Any], retry: RetryPolicy
) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """``RunConfig``'s ``storage_path`` and ``storage_filesystem`` for a folder or URL.

    A local folder goes to Ray as it is. A URL (``s3://``, ``gs://``, ...) goes through fsspec,
    like the training data: same credentials (environment or ``storage_options``), same endpoint
    settings (``AWS_ENDPOINT_URL`` included), wrapped as a pyarrow filesystem for Ray whose calls
    retry transient errors under ``retry`` (:class:`_RetryingHandler`)."""
    protocol, _ = fsspec.core.split_protocol(storage_path)
    if protocol in (None, "file", "local"):
        return os.path.abspath(fsspec.core.strip_protocol(storage_path)), None
    fs, path = filesystem(storage_path, bounded_storage_options(storage_path, storage_options, retry.max_total_sec))
    return path, pyarrow.fs.PyFileSystem(_RetryingHandler(fs, retry))


class _RetryingHandler(pyarrow.fs.FSSpecHandler):
    """Ray Train's view of the run storage, retrying through outages as the workers' transfers do.

    Ray Train's controller writes the run state (``checkpoint_manager_snapshot.json``) after every
    report: without retries, a few seconds of object-store outage at that moment end the run.
    A write is buffered and sent on close as one retried upload (the controller's files are small;
    checkpoints go through :func:`upload_checkpoint`); every other call is retried as a whole."""

    def __init__(self, fs: fsspec.AbstractFileSystem, retry: RetryPolicy) -> None:
        super().__init__(fs)
        self.retry = retry

    def open_output_stream(self, path: str, metadata: Any) -> pyarrow.PythonFile:
        return pyarrow.PythonFile(_RetriedUpload(self.fs, path, self.retry), mode="w")


def _retried(name: str) -> Any:
    call = getattr(pyarrow.fs.FSSpecHandler, name)

    @functools.wraps(call)
    def method(self: _RetryingHandler, *args: Any) -> Any:
        return retry_call(lambda: call(self, *args), self.retry, what=f"storage {name} {args[:1]}")

    return method


for _name in (
    "copy_file", "create_dir", "delete_dir", "delete_dir_contents", "delete_file", "delete_root_dir_contents",
    "get_file_info", "get_file_info_selector", "move", "open_input_file", "open_input_stream",
):
    setattr(_RetryingHandler, _name, _retried(_name))


class _RetriedUpload(io.BytesIO):
    """A file that uploads what was written to it on close, retrying transient errors."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, retry: RetryPolicy) -> None:
        super().__init__()
        self.fs, self.path, self.retry = fs, path, retry

    def close(self) -> None:
        if not self.closed:
            data = self.getvalue()
            deadline_s = upload_deadline_s(len(data), self.retry.max_total_sec)
            upload = functools.partial(with_deadline, self.fs, deadline_s, self.fs.pipe_file, self.path, data)
            retry_call(upload, self.retry, what=f"writing {self.path}")
        super().close()


