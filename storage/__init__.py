"""Storage, the ground floor: every file flowshard reads or writes, on a local disk or object storage.

A data path is a local path or a URI that `pyarrow.fs` resolves (`s3://bucket/prefix`, including
S3-compatible stores through AWS_ENDPOINT_URL, `gs://`, `hdfs://`). Nothing else in flowshard opens a data
path itself: `Location` reads, lists, deletes and writes atomically, and `join` builds paths (pathlib would
silently turn `s3://b/x` into `s3:/b/x`). Credentials may be in a URI (`s3://KEY:SECRET@bucket/...`, with
query options such as `endpoint_override`, `scheme`, `region`); `redact` hides them wherever a location is shown.
"""

from .location import (
    READ_BUFFER,
    TMP_MARK,
    HashingWriter,
    Location,
    OutputFault,
    StorageError,
    basename,
    is_uri,
    join,
    parent,
    redact,
    redacted,
    relative_to,
    write_fault,
)

__all__ = [
    "READ_BUFFER",
    "TMP_MARK",
    "HashingWriter",
    "Location",
    "OutputFault",
    "StorageError",
    "basename",
    "is_uri",
    "join",
    "parent",
    "redact",
    "redacted",
    "relative_to",
    "write_fault",
]
