"""Rekognition's error vocabulary, shared by the pipeline, the operations layer and HTTP.

Every failure a client can cause is one of these, so each layer can raise the exact
error Rekognition would send and the HTTP layer only has to serialise it.
"""

from __future__ import annotations


class RekognitionError(Exception):
    """An error with Rekognition's `__type` code; `status` is the HTTP status it maps to."""

    code = "InternalServerError"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _client_error(code: str, status: int = 400) -> type[RekognitionError]:
    return type(code, (RekognitionError,), {"code": code, "status": status, "__doc__": f"Rekognition {code}."})


InvalidParameterException = _client_error("InvalidParameterException")
#: What AWS's front end answers for a request that breaks the API model's constraints.
ValidationException = _client_error("ValidationException")
#: What AWS's front end answers for a body it cannot deserialise (wrong JSON types, bad base64).
SerializationException = _client_error("SerializationException")
InvalidImageFormatException = _client_error("InvalidImageFormatException")
ImageTooLargeException = _client_error("ImageTooLargeException")
InvalidS3ObjectException = _client_error("InvalidS3ObjectException")
ResourceNotFoundException = _client_error("ResourceNotFoundException")
ResourceAlreadyExistsException = _client_error("ResourceAlreadyExistsException")
InvalidPaginationTokenException = _client_error("InvalidPaginationTokenException")
AccessDeniedException = _client_error("AccessDeniedException")
ThrottlingException = _client_error("ThrottlingException")
LimitExceededException = _client_error("LimitExceededException")
ConflictException = _client_error("ConflictException")
ServiceQuotaExceededException = _client_error("ServiceQuotaExceededException")
#: What Rekognition's front end answers before an operation runs. Rekognition speaks AWS JSON 1.1
#: (Coral), whose authentication errors are 400s (REST services such as Lambda send 403): a captured
#: Rekognition reply to an expired signature is `400 {"__type":"InvalidSignatureException",...}`.
UnknownOperationException = _client_error("UnknownOperationException")
MissingAuthenticationTokenException = _client_error("MissingAuthenticationTokenException")
IncompleteSignatureException = _client_error("IncompleteSignatureException")
InvalidSignatureException = _client_error("InvalidSignatureException")
UnrecognizedClientException = _client_error("UnrecognizedClientException")
#: A body over the daemon's limit is refused before it is read; 413 is not retried by clients.
RequestEntityTooLargeException = _client_error("RequestEntityTooLargeException", 413)
