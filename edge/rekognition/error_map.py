"""The one map from the store's typed errors to the Rekognition errors a client receives."""

from __future__ import annotations

import time

from edge import errors
from edge.store import errors as store


def api_error(exc: store.StoreError) -> errors.RekognitionError | None:
    """Rekognition's error for a store refusal; None for a fault that no client caused."""
    match exc:
        case store.CollectionNotFound():
            return errors.ResourceNotFoundException(f"The collection id: {exc.collection_id} does not exist")
        case store.CollectionExists():
            return errors.ResourceAlreadyExistsException(f"The collection id: {exc.collection_id} already exists")
        case store.UserNotFound():
            return errors.ResourceNotFoundException(
                f"The user id: {exc.user_id} does not exist in collection {exc.collection_id}")
        case store.UserExists():
            return errors.ConflictException(
                f"A user with the id {exc.user_id} already exists in collection {exc.collection_id}")
        case store.TooManyTags():
            return errors.ServiceQuotaExceededException(
                f"A resource can have at most {exc.limit} tags: this request would leave collection "
                f"{exc.collection_id} with more. Nothing was changed")
        case store.FaceNotFound():
            return errors.InvalidParameterException(
                f"The face id: {exc.face_id} does not exist in collection {exc.collection_id}")
        case store.StoreUnwritable():
            # 503: every SDK retries it, and the message says what an operator must fix.
            return errors.ServiceUnavailableException(f"The device cannot store changes: {exc.reason}. "
                                                      "Nothing was changed")
        case store.RequestMismatch():
            return errors.IdempotentParameterMismatchException(
                "The ClientRequestToken was used before with other parameters")
        case store.FaceModelMismatch():
            return errors.InvalidParameterException(
                f"Collection {exc.collection_id} was created with face model {exc.expected[0]}; this device "
                f"runs {exc.got[0]}: faces of different models never mix")
        case store.CollectionReadOnly():
            return errors.InvalidParameterException(
                f"Collection {exc.collection_id} is synced from the central at {exc.source} and is read-only on "
                f"this device: enrol, delete and manage its faces and users there")
        case store.CollectionStale():
            return errors.ServiceUnavailableException(
                f"Collection {exc.collection_id} has not been synced since its feed expired at "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(exc.valid_until))}: it may still hold people "
                f"deleted at the central, so this device does not match against it until it syncs again")
    return None
