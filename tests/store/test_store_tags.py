"""A collection's tags in the store, on both databases: kept with the collection, limited, gone with it."""

from __future__ import annotations

import pytest
from store_support import DIM, MODEL, OpenStore

from edge.store import CollectionNotFound, Store, TooManyTags

ARN = "aws:rekognition:us-east-1:000000000000:collection/c"


def _create(store: Store, tags: dict[str, str] | None = None) -> None:
    store.create_collection("c", face_model_version=MODEL, dim=DIM, arn=ARN, tags=tags, max_tags=3)


def test_tags_are_kept_with_the_collection_and_survive_reopening(open_store: OpenStore) -> None:
    store = open_store()
    _create(store, {"team": "door", "site": "hq"})
    store.tag_collection("c", {"team": "lobby", "owner": ""}, max_tags=3)  # a new value, an empty one
    store.untag_collection("c", ["site", "never-set"])  # a key it does not have is no error
    assert store.tags("c") == {"team": "lobby", "owner": ""}
    store.close()
    assert open_store().tags("c") == {"team": "lobby", "owner": ""}


def test_more_tags_than_allowed_change_nothing(open_store: OpenStore) -> None:
    store = open_store()
    with pytest.raises(TooManyTags):
        _create(store, {"a": "1", "b": "2", "c": "3", "d": "4"})
    with pytest.raises(CollectionNotFound):
        store.get_collection("c")
    _create(store, {"a": "1", "b": "2"})
    with pytest.raises(TooManyTags):
        store.tag_collection("c", {"a": "new", "c": "3", "d": "4"}, max_tags=3)
    assert store.tags("c") == {"a": "1", "b": "2"}
    store.tag_collection("c", {"a": "new", "c": "3"}, max_tags=3)  # replacing a value adds no tag
    assert store.tags("c") == {"a": "new", "b": "2", "c": "3"}


def test_a_deleted_collection_takes_its_tags_with_it(open_store: OpenStore) -> None:
    store = open_store()
    _create(store, {"team": "door"})
    store.delete_collection("c")
    for read in (lambda: store.tags("c"), lambda: store.tag_collection("c", {"x": "y"}, max_tags=3),
                 lambda: store.untag_collection("c", ["team"])):
        with pytest.raises(CollectionNotFound):
            read()
    _create(store)
    assert store.tags("c") == {}

