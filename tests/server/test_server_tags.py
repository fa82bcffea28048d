"""Collection tags through the real aws CLI and boto3: kept, changed, refused as Rekognition refuses them."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from server_support import Daemon, error_line, start_daemon

PATTERN = r"^(?!aws:)[\p{L}\p{Z}\p{N}_.:/=+\-@]*$"


def _arn(daemon: Daemon, cid: str, tags: str | None = None) -> str:
    args = ["create-collection", "--collection-id", cid] + (["--tags", tags] if tags else [])
    arn: str = daemon.aws_json(*args)["CollectionArn"]
    return arn


def _tags(daemon: Daemon, arn: str) -> dict[str, str]:
    found: dict[str, str] = daemon.aws_json("list-tags-for-resource", "--resource-arn", arn)["Tags"]
    return found


def _refused(daemon: Daemon, operation: str, body: dict[str, object], code: str) -> str:
    reply = daemon.post(operation, body)
    assert (reply.status, reply.code) == (400, code), reply.body
    message: str = reply.json["message"]
    return message


def test_create_with_tags_then_list_tag_and_untag_through_the_cli(daemon: Daemon) -> None:
    arn = _arn(daemon, "tags-cli", "team=door,site=hq")
    assert _tags(daemon, arn) == {"team": "door", "site": "hq"}
    assert daemon.aws_json("tag-resource", "--resource-arn", arn, "--tags", "team=lobby,owner=") == {}
    assert daemon.aws_json("untag-resource", "--resource-arn", arn, "--tag-keys", "site", "never-set") == {}
    assert _tags(daemon, arn) == {"team": "lobby", "owner": ""}
    assert _tags(daemon, "arn:" + arn) == {"team": "lobby", "owner": ""}  # the ARN as IAM spells it


def test_boto3_round_trip_and_the_kiosk_may_only_read(daemon: Daemon) -> None:
    admin, kiosk = daemon.client(), daemon.client("kiosk")
    arn = admin.create_collection(CollectionId="tags-boto", Tags={"site": "hq"})["CollectionArn"]
    assert admin.describe_collection(CollectionId="tags-boto")["CollectionARN"] == arn  # what Terraform reads back
    admin.tag_resource(ResourceArn=arn, Tags={"door": "3"})
    assert kiosk.list_tags_for_resource(ResourceArn=arn)["Tags"] == {"site": "hq", "door": "3"}
    calls: list[Callable[[], object]] = [lambda: kiosk.tag_resource(ResourceArn=arn, Tags={"x": "y"}),
                                         lambda: kiosk.untag_resource(ResourceArn=arn, TagKeys=["site"])]
    for call in calls:
        with pytest.raises(ClientError) as refused:
            call()
        assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    admin.untag_resource(ResourceArn=arn, TagKeys=["site"])
    assert admin.list_tags_for_resource(ResourceArn=arn)["Tags"] == {"door": "3"}


def test_every_refusal_has_rekognitions_code_and_changes_nothing(daemon: Daemon) -> None:
    arn = _arn(daemon, "tags-bad", "team=door")
    reserved = _refused(daemon, "TagResource", {"ResourceArn": arn, "Tags": {"aws:team": "x"}},
                        "ValidationException")
    assert reserved == ("1 validation error detected: Value '{aws:team=x}' at 'tags' failed to satisfy constraint: "
                        "Map keys must satisfy constraint: "
                        f"[Member must satisfy regular expression pattern: {PATTERN}]")
    long_key = _refused(daemon, "TagResource", {"ResourceArn": arn, "Tags": {"k" * 129: "v"}},
                        "ValidationException")
    assert "Map keys must satisfy constraint: [Member must have length less than or equal to 128]" in long_key
    long_value = _refused(daemon, "TagResource", {"ResourceArn": arn, "Tags": {"k": "v" * 257}}, "ValidationException")
    assert "Map value must satisfy constraint: [Member must have length less than or equal to 256]" in long_value
    bad_value = _refused(daemon, "TagResource", {"ResourceArn": arn, "Tags": {"k": "a#b"}}, "ValidationException")
    assert "Map value must satisfy constraint: [Member must satisfy regular expression pattern:" in bad_value
    many = {f"k{i}": "v" for i in range(201)}
    over_request = _refused(daemon, "TagResource", {"ResourceArn": arn, "Tags": many}, "ValidationException")
    assert "at 'tags' failed to satisfy constraint: Member must have length less than or equal to 200" in over_request
    untag = _refused(daemon, "UntagResource", {"ResourceArn": arn, "TagKeys": ["aws:x"]}, "ValidationException")
    assert untag.startswith("1 validation error detected: Value '[aws:x]' at 'tagKeys' failed to satisfy constraint: "
                            "Member must satisfy constraint: [Member must satisfy regular expression pattern:")
    short = _refused(daemon, "ListTagsForResource", {"ResourceArn": "aws:x"}, "ValidationException")
    assert short == ("1 validation error detected: Value 'aws:x' at 'resourceArn' failed to satisfy constraint: "
                     "Member must have length greater than or equal to 20")
    quota = _refused(daemon, "TagResource", {"ResourceArn": arn, "Tags": {f"k{i}": "v" for i in range(50)}},
                     "ServiceQuotaExceededException")
    assert quota.startswith("A resource can have at most 50 tags")
    assert _tags(daemon, arn) == {"team": "door"}  # none of these changed anything
    _refused(daemon, "CreateCollection", {"CollectionId": "tags-many", "Tags": {f"k{i}": "v" for i in range(51)}},
             "ServiceQuotaExceededException")
    _refused(daemon, "CreateCollection", {"CollectionId": "tags-many", "Tags": {"aws:x": "v"}}, "ValidationException")
    assert "tags-many" not in daemon.aws_json("list-collections")["CollectionIds"]


def test_an_arn_of_no_collection_here_is_not_found_and_a_malformed_one_invalid(daemon: Daemon) -> None:
    arn = _arn(daemon, "tags-arn")
    for absent in (arn.replace("tags-arn", "tags-nowhere"), arn.replace("000000000000", "111111111111"),
                   arn.replace("us-east-1", "eu-west-1"), arn.replace("collection/", "project/")):
        done = daemon.aws("list-tags-for-resource", "--resource-arn", absent)
        assert done.returncode == 255 and error_line("ResourceNotFoundException", "ListTagsForResource") in done.stderr
    for malformed in ("not-an-arn-at-all-but-long", "arn:aws:s3:::bucket/collection/x",
                      "aws:rekognition:us-east-1:000000000000:collection/bad id"):
        message = _refused(daemon, "TagResource", {"ResourceArn": malformed, "Tags": {"a": "b"}},
                           "InvalidParameterException")
        assert message == f"{malformed} is not a valid Amazon Rekognition resource ARN"


def test_a_key_limited_to_collections_tags_only_those(daemon: Daemon, tmp_path: Path) -> None:
    mine, other = _arn(daemon, "tags-mine"), _arn(daemon, "tags-other")
    from edge.server.credentials import KeyStore

    key = KeyStore(daemon.state_dir).create("tags-scoped", None, ["tags-mine"])
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[scoped]\naws_access_key_id = {key.access_key_id}\n"
                           f"aws_secret_access_key = {key.secret_access_key}\n")
    ok = daemon.aws("tag-resource", "--resource-arn", mine, "--tags", "a=b", profile="scoped", credentials=credentials)
    assert ok.returncode == 0, ok.stderr
    refused = daemon.aws("tag-resource", "--resource-arn", other, "--tags", "a=b", profile="scoped",
                         credentials=credentials)
    assert error_line("AccessDeniedException", "TagResource") in refused.stderr
    assert _tags(daemon, other) == {}


def test_tags_survive_kill_9_and_leave_with_their_collection(tmp_path: Path) -> None:
    first = start_daemon(tmp_path / "state")
    try:
        arn = _arn(first, "door", "site=hq")
        first.aws_json("tag-resource", "--resource-arn", arn, "--tags", "team=door")
    finally:
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(30)
    second = start_daemon(tmp_path / "state")
    try:
        assert _tags(second, arn) == {"site": "hq", "team": "door"}
        second.aws_json("delete-collection", "--collection-id", "door")
        done = second.aws("list-tags-for-resource", "--resource-arn", arn)
        assert error_line("ResourceNotFoundException", "ListTagsForResource") in done.stderr
        assert _arn(second, "door") == arn
        assert json.loads(second.aws("list-tags-for-resource", "--resource-arn", arn).stdout) == {"Tags": {}}
    finally:
        second.stop()
