"""What the front door prints for an error: one line and an exit code, never a traceback
(`--verbose` adds it).

Exit 2 is bad input the user can fix by changing the command (a flag, a config field, a path
that does not exist); exit 1 is the environment (a full disk, a permission, S3 refusing or
failing). Each line names the thing at fault (the field path, the file, the bucket and key)
and, where there is one, what to do next. Errors that are neither are not ours to explain:
they return None and propagate with their traceback, as bugs should.
"""
from __future__ import annotations

import errno
from typing import Optional

from groundfloor.errors import UsageError, describe_validation_error

BAD_INPUT, ENVIRONMENT = 2, 1
# A rerun resumes: every command that writes (shard, migrate, embed --ray, train) skips what it
# finished and rewrites only what it had not committed.
RERUN = "rerun the same command when there is space: it resumes where it stopped"


def root_cause(err: BaseException) -> BaseException:
    """The user's error inside the wrappers that carry it here (a Ray task's error, a worker
    process's error re-raised in the driver)."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        cause = getattr(err, "cause", None)  # ray.exceptions.RayTaskError
        if isinstance(cause, BaseException):
            err = cause
            continue
        break
    return err


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe_os_error(err: OSError) -> tuple[str, int]:
    path = err.filename if err.filename is not None else None
    where = f" {path}" if path else ""
    if err.errno == errno.ENOSPC or err.errno == errno.EDQUOT:
        return f"no space left on the device writing{where}: free space or choose another output, then {RERUN}", ENVIRONMENT
    if isinstance(err, PermissionError) or err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied:{where or ' (no path given)'}: check the owner and mode of that path", ENVIRONMENT
    if err.errno == errno.EROFS:
        return f"read-only file system:{where}: choose an output on a writable disk", ENVIRONMENT
    if isinstance(err, FileNotFoundError):
        return (f"no such file or folder: {path}" if path else one_line(err)) + ": check the path", BAD_INPUT
    if isinstance(err, (IsADirectoryError, NotADirectoryError)):
        return f"{err.strerror or one_line(err)}:{where}: check the path", BAD_INPUT
    return f"{err.strerror or one_line(err)}{':' + where if where else ''}", ENVIRONMENT


def describe_s3_error(err: BaseException) -> tuple[str, int]:
    """botocore's ClientError: the code, the operation, and the bucket/key where known."""
    info = getattr(err, "response", {}).get("Error", {})
    code = info.get("Code", "error")
    target = getattr(err, "uri", None)
    if not target and info.get("BucketName"):
        target = f"s3://{info['BucketName']}/{info.get('Key', '')}".rstrip("/")
    where = f" {target}" if target else ""
    message = one_line(info.get("Message", "")) or one_line(err)
    operation = getattr(err, "operation_name", "request")
    status = BAD_INPUT if code in ("NoSuchBucket", "NoSuchKey", "InvalidBucketName") else ENVIRONMENT
    return f"S3 {operation}{where}: {code}: {message}", status


def describe(err: BaseException) -> Optional[tuple[str, int]]:
    """(one line, exit code) for an error the user can act on, else None."""
    err = root_cause(err)
    if isinstance(err, UsageError):
        return one_line(err), BAD_INPUT
    if type(err).__name__ == "ValidationError" and hasattr(err, "errors"):  # pydantic, not imported here
        return one_line(describe_validation_error(err)), BAD_INPUT
    module = type(err).__module__ or ""
    if module.startswith("botocore"):
        if hasattr(err, "response"):
            return describe_s3_error(err)
        return f"S3: {one_line(err)}", ENVIRONMENT  # no credentials, endpoint unreachable, ...
    if isinstance(err, OSError):
        return describe_os_error(err)
    return None
