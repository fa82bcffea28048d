"""Rekognition's error vocabulary, shared by the pipeline, the operations layer and HTTP.

Every failure a client can cause is one of these, named by Rekognition's `__type` code, so each
layer raises the exact error Rekognition would send. Which HTTP status carries each one is the
server's business (`edge.server.app`), not the layers' that raise them.
"""

from __future__ import annotations


class RekognitionError(Exception):
    """An error with Rekognition's `__type` code, which is the class name."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def code(self) -> str:
        return type(self).__name__


class InternalServerError(RekognitionError):
    """Something failed on the device that the client did not cause."""


class InvalidParameterException(RekognitionError):
    """A request that passes the API model but not the operation's own rules."""


class ValidationException(RekognitionError):
    """What AWS's front end answers for a request that breaks the API model's constraints."""


class SerializationException(RekognitionError):
    """What AWS's front end answers for a body it cannot deserialise (wrong JSON types, bad base64)."""


class InvalidImageFormatException(RekognitionError):
    """Image bytes that are not a JPEG or PNG, or that do not decode."""


class ImageTooLargeException(RekognitionError):
    """An image over Rekognition's size or resolution limits."""


class InvalidS3ObjectException(RekognitionError):
    """An S3Object that no mapped bucket directory holds."""


class ResourceNotFoundException(RekognitionError):
    """An unknown collection or user."""


class ResourceAlreadyExistsException(RekognitionError):
    """A collection id that is taken."""


class InvalidPaginationTokenException(RekognitionError):
    """A NextToken this device did not issue for this listing."""


class AccessDeniedException(RekognitionError):
    """A key whose scope does not cover the operation."""


class ThrottlingException(RekognitionError):
    """The inference queue is full; clients back off and retry."""


class LimitExceededException(RekognitionError):
    """A request over one of Rekognition's service limits."""


class ConflictException(RekognitionError):
    """A user id that is taken, or an idempotency token reused with other parameters."""


class ServiceQuotaExceededException(RekognitionError):
    """A user with as many faces as Rekognition allows."""


class IdempotentParameterMismatchException(RekognitionError):
    """A ClientRequestToken used before with other parameters."""


# What Rekognition's front end answers before an operation runs. Rekognition speaks AWS JSON 1.1
# (Coral), whose authentication errors are 400s (REST services such as Lambda send 403): a captured
# Rekognition reply to an expired signature is `400 {"__type":"InvalidSignatureException",...}`.


class UnknownOperationException(RekognitionError):
    """A target or content type that names no Rekognition operation."""


class MissingAuthenticationTokenException(RekognitionError):
    """A request without a signature."""


class IncompleteSignatureException(RekognitionError):
    """A signature header that lacks a required part."""


class InvalidSignatureException(RekognitionError):
    """A signature that does not verify, or whose date is out of range."""


class UnrecognizedClientException(RekognitionError):
    """An access key the device does not know."""


class RequestEntityTooLargeException(RekognitionError):
    """A body over the daemon's limit, refused before it is read."""


class ServiceUnavailableException(RekognitionError):
    """The daemon cannot serve the request now (shutting down, storage full, too many connections); retried."""
