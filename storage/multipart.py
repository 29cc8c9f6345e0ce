"""Incomplete S3 multipart uploads: the invisible leftovers of writers that were killed mid-upload.

pyarrow can neither list nor abort them, so this uses boto3, configured by the same environment
(AWS_ENDPOINT_URL, credentials, region). Until aborted, their parts are stored (and billed); a bucket
lifecycle rule (AbortIncompleteMultipartUpload) is the belt to these braces.
"""

from __future__ import annotations

import os


def abort_incomplete_uploads(bucket: str, prefix: str, mark: str) -> list[str]:
    """Abort the incomplete uploads directly under `prefix` whose key contains `mark`; returns their keys."""
    import boto3  # only needed, and only imported, for s3:// locations
    import botocore.exceptions

    try:
        return _abort(boto3, bucket, prefix, mark)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise OSError(f"listing incomplete uploads failed: {exc}") from None


def _abort(boto3, bucket: str, prefix: str, mark: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    aborted = []
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        for upload in page.get("Uploads", []):
            if mark in upload["Key"][len(prefix) :]:
                client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted.append(upload["Key"])
    return aborted
