"""Incomplete S3 multipart uploads: the invisible leftovers of writers that were killed mid-upload.

pyarrow can neither list nor abort them, so this uses boto3, configured as pyarrow is: by the URI's
credentials and options where it has them, else by the environment (AWS_ENDPOINT_URL, credentials,
region). Until aborted, their parts are stored (and billed); a bucket lifecycle rule
(AbortIncompleteMultipartUpload) is the belt to these braces.
"""

from __future__ import annotations

import os
import urllib.parse


def client_options(uri: str) -> dict:
    """boto3 client settings from what an s3:// URI carries as pyarrow reads it: credentials in its user info
    (`s3://KEY:SECRET@bucket/...`), `endpoint_override`, `scheme` and `region` options; {} for a plain URI (boto3
    then reads the environment, as pyarrow does)."""
    parts = urllib.parse.urlsplit(uri)
    options = dict(urllib.parse.parse_qsl(parts.query))
    out = {}
    if parts.username is not None:
        out["aws_access_key_id"] = urllib.parse.unquote(parts.username)
        out["aws_secret_access_key"] = urllib.parse.unquote(parts.password or "")
    if "endpoint_override" in options:
        out["endpoint_url"] = f"{options.get('scheme', 'https')}://{options['endpoint_override']}"
    if "region" in options:
        out["region_name"] = options["region"]
    return out


def abort_incomplete_uploads(bucket: str, prefix: str, mark: str, options: dict | None = None) -> list[str]:
    """Abort the incomplete uploads directly under `prefix` whose key contains `mark`; returns their keys.
    `options`: `client_options` of the location's URI."""
    import boto3  # only needed, and only imported, for s3:// locations
    import botocore.exceptions

    try:
        return _abort(boto3, bucket, prefix, mark, options or {})
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise OSError(f"listing incomplete uploads failed: {exc}") from None


def _abort(boto3, bucket: str, prefix: str, mark: str, options: dict) -> list[str]:
    client = boto3.client("s3", **{"endpoint_url": os.environ.get("AWS_ENDPOINT_URL") or None, **options})
    aborted = []
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        for upload in page.get("Uploads", []):
            if mark in upload["Key"][len(prefix) :]:
                client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted.append(upload["Key"])
    return aborted
