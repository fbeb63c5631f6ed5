"""What a training worker's log leaves out: library lines that repeat with every report, every new
storage client or every worker, and that a user cannot act on. Warnings and errors that call for
action stay; the worker's own progress is :mod:`octvideo.train.report_lines`, on rank 0.

Left out:

* Ray Train's "Reporting training result N: TrainingReport(...)" of every report on every rank:
  its logger is named after its file, outside ``ray.train``, so ``RunConfig``'s
  ``LoggingConfig(log_level=...)`` does not reach it (and would drop the controller's lifecycle
  lines); its level is raised to WARNING;
* (aio)botocore's "Found credentials in environment variables" / "Found endpoint for s3 via ..." of
  every new S3 client (INFO); fsspec's cache lines and Ray Data's per-epoch pipeline (INFO);
  the label map the datasets use (the job's driver names it once);
* DeepSpeed's untested-optimizer warning (ZeRO with SGD is deliberate, see
  :mod:`octvideo.train.deepspeed_config`) and torch's ``all_gather_into_tensor`` FutureWarning
  from DeepSpeed's collectives;
* on CPU-only runs: DeepSpeed's "Setting accelerator to CPU" and torch's "No CUDA runtime is
  found" (its CPU op builds); with GPUs they say something is wrong, and stay;
* DeepSpeed's prints of its op builds ("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built
  successfully"). Ray Train's print patch logs a print on the root logger (dropped by a filter
  there) and, where ``sys.stdout`` is not the original one, prints it as well: the engine is
  made under :func:`prints_to_debug_log`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

_QUIET_LOGGERS = ("fsspec", "ray.data", "botocore", "aiobotocore", "octvideo.data.manifest")


class DropMessages(logging.Filter):
    """Drops the records whose message contains one of ``texts``."""

    def __init__(self, *texts: str) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.texts)


# One instance each: a logger adds the same filter once, however often a process sets them.
_UNTESTED_OPTIMIZER = DropMessages("You are using ZeRO with an untested optimizer")
_CPU_ACCELERATOR = DropMessages("Setting accelerator to CPU")
_NO_CUDA_RUNTIME = DropMessages("No CUDA runtime is found")
_OP_BUILDS = DropMessages("DeepSpeed deepspeed.ops.")


def quiet_library_logs(use_gpu: bool) -> None:
    """Leave the lines listed in the module docstring out of this worker process's log (and its
    forked DataLoader workers'); ``use_gpu``: whether the run trains on GPUs."""
    from ray.train.v2._internal.execution import context as ray_train_context

    for name in (*_QUIET_LOGGERS, ray_train_context.__file__):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("DeepSpeed").addFilter(_UNTESTED_OPTIMIZER)
    logging.getLogger().addFilter(_OP_BUILDS)  # a logger's filters see only the records logged on it
    if not use_gpu:
        logging.getLogger("DeepSpeed").addFilter(_CPU_ACCELERATOR)
        logging.getLogger("torch.utils.cpp_extension").addFilter(_NO_CUDA_RUNTIME)
    warnings.filterwarnings(
        "ignore", message="`torch.distributed.all_gather_into_tensor` is deprecated", category=FutureWarning
    )


class _LinesToLog(io.TextIOBase):
    """A text stream whose non-blank lines go to ``logger`` at DEBUG."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self.logger.debug("%s", line)
        return len(text)


@contextlib.contextmanager
def prints_to_debug_log(logger: logging.Logger) -> Iterator[None]:
    """Within the block, what is printed to ``sys.stdout`` (by any thread) goes to ``logger`` at DEBUG."""
    with contextlib.redirect_stdout(_LinesToLog(logger)):
        yield
