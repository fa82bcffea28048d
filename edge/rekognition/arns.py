"""Resource ARNs, as the tagging operations take them: which collection an ARN names.

Rekognition hands out a collection's ARN without the `arn:` prefix (`aws:rekognition:us-east-1:
000000000000:collection/door`, what CreateCollection and DescribeCollection answer, and what Terraform passes
back to ListTagsForResource), while IAM policies spell it with one: both name the same collection here.
"""

from __future__ import annotations

import re

from edge import errors

_ARN = re.compile(r"(?:arn:)?(aws[a-z-]*):rekognition:([a-z0-9-]*):([0-9]*):([a-z]+)/(.+)", re.ASCII)
_COLLECTION_ID = re.compile(r"[a-zA-Z0-9_.\-]{1,255}", re.ASCII)  # the model's CollectionId


def canonical(arn: str) -> str:
    """The ARN as Rekognition spells a collection's: without the `arn:` prefix."""
    return arn.removeprefix("arn:")


def collection_id(arn: str) -> str:
    """The id of the collection `arn` names.

    Raises InvalidParameterException for a string that is no Rekognition ARN (the model lists that error for
    the tagging operations, and ResourceArn has no pattern that would make it a ValidationException), and
    ResourceNotFoundException for another kind of Rekognition resource (projects and stream processors,
    which edge-face has none of).
    """
    match = _ARN.fullmatch(arn)
    if match is None or (match[4] == "collection" and not _COLLECTION_ID.fullmatch(match[5])):
        raise errors.InvalidParameterException(f"{arn} is not a valid Amazon Rekognition resource ARN")
    if match[4] != "collection":
        raise errors.ResourceNotFoundException(f"The resource {arn} does not exist")
    return match[5]


def named_collection(arn: object) -> str | None:
    """The collection an ARN as sent (not yet validated) names, or None: for the key scopes' check."""
    if not isinstance(arn, str):
        return None
    try:
        return collection_id(arn)
    except errors.RekognitionError:
        return None
