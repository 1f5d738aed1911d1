"""README's "Many hosts" and docs/compose.s3.yml, kept correct by reading them (issue 12).

No container engine runs here: the compose file is parsed, and each promoter
service's environment is loaded by promoter's own configuration loader; the IAM
policy in the README is checked against every S3 call the code makes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from promoter.config import load_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docs" / "compose.s3.yml"
README = ROOT / "README.md"
PROMOTER_SERVICES = ("bucket", "promoter-a", "promoter-b", "promoter-web")

# Each client call promoter makes -> the IAM actions it needs (AWS's S3 action reference).
# obstore.put covers single, conditional and multipart PUTs, and aborts a failed multipart.
CALL_ACTIONS = {
    "obstore.get": {"s3:GetObject"},  # GET, HEAD (options head) and ranged reads
    "obstore.put": {"s3:PutObject", "s3:AbortMultipartUpload"},
    "obstore.delete": {"s3:DeleteObject"},  # DeleteObjects, in batches
    "obstore.copy": {"s3:GetObject", "s3:PutObject"},  # CopyObject: read the source, write the copy
    "obstore.list": {"s3:ListBucket"},  # ListObjectsV2 (serve's listing of meta/)
    "obstore.list_with_delimiter": {"s3:ListBucket"},
    "obstore.head": {"s3:GetObject"},
    "_boto.head_bucket": {"s3:ListBucket"},
    "_boto.list_objects_v2": {"s3:ListBucket"},
    "_boto.list_multipart_uploads": {"s3:ListBucketMultipartUploads"},
    "_boto.abort_multipart_upload": {"s3:AbortMultipartUpload"},
}


def _compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")  # PyYAML arrives with the test extra
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _section(heading: str) -> str:
    text = README.read_text()
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {heading}' section"
    return match.group(1)


def _json_blocks(text: str) -> list[Any]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.S)]


def _interpolated(env: dict[str, Any]) -> dict[str, str]:
    """Compose's `${NAME:?message}` replaced by a stand-in value; every value a string."""
    return {k: re.sub(r"\$\{[A-Z0-9_]+:\?[^}]*\}", "stand-in", str(v)) for k, v in env.items()}


def test_compose_services_share_one_bucket_and_load_as_promoter_config() -> None:
    """Every promoter service's environment is a valid configuration naming the same bucket."""
    services = _compose()["services"]
    assert {"seaweedfs", *PROMOTER_SERVICES} == set(services)
    stores = set()
    for name in PROMOTER_SERVICES:
        env = _interpolated(services[name]["environment"])
        config = load_config(env=env)
        s3 = config.storage.s3
        assert config.storage.backend == "s3", name
        assert s3.endpoint == "http://seaweedfs:8333" and s3.allow_http, name
        stores.add((s3.bucket, s3.prefix, s3.endpoint))
        assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == "stand-in"
        assert services[name]["build"]["args"]["EXTRAS"] == "web,s3", name
    assert stores == {("promoter", "prod/", "http://seaweedfs:8333")}


def test_compose_daemons_are_two_hosts_and_the_server_needs_no_sessions() -> None:
    """Each daemon has its own host id and sessions volume; the server mounts none."""
    services = _compose()["services"]
    hosts = {}
    for name in ("promoter-a", "promoter-b"):
        svc = services[name]
        assert svc["command"] == ["promoter", "run"]
        assert "network_mode" not in svc  # the bucket is over the network
        assert svc["depends_on"]["bucket"]["condition"] == "service_completed_successfully"
        hosts[name] = load_config(env=_interpolated(svc["environment"])).storage.host
        (volume,) = svc["volumes"]
        assert volume.endswith(":/app/storage/sessions")
    assert hosts == {"promoter-a": "host-a", "promoter-b": "host-b"}
    web = services["promoter-web"]
    assert web["command"] == ["promoter", "serve", "--listen", "0.0.0.0:8730"]
    assert "volumes" not in web
    assert web["environment"]["PROMOTER_HTTP__TOKEN_FILE"] == "/run/secrets/promoter_token"
    # the server answers to its service name (DESIGN §7)
    assert "promoter-web" in load_config(env=_interpolated(web["environment"])).http.allowed_hosts
    # weed makes the AWS variables its admin identity: the same credentials as promoter's
    weed = services["seaweedfs"]
    assert weed["command"][:2] == ["server", "-s3"]
    assert weed["environment"] == {k: services["promoter-a"]["environment"][k]
                                   for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}


def test_compose_bucket_script_compiles_and_sets_the_lifecycle_rule() -> None:
    """The one-shot bucket service runs valid Python that makes the bucket and the rule."""
    command = _compose()["services"]["bucket"]["command"]
    assert command[:2] == ["python", "-c"]
    source = command[2]
    compile(source, "bucket", "exec")
    assert "create_bucket" in source and "put_bucket_lifecycle_configuration" in source
    assert '"DaysAfterInitiation": 1' in source
    assert "$" not in source  # compose would interpolate it


def _calls_in_code() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "promoter").rglob("*.py"):
        text = path.read_text()
        found.update(m.group(0)[:-1] for m in re.finditer(r"\bobstore\.[a-z_0-9]+\(", text))
        found.update(m.group(0)[:-1] for m in re.finditer(r"\b_boto\.[a-z_0-9]+\(", text))
    return found


def test_readme_iam_policy_grants_exactly_what_the_code_calls() -> None:
    """The policy's actions are the union of what each S3 call in promoter/ needs, no more."""
    calls = _calls_in_code()
    unknown = calls - CALL_ACTIONS.keys()
    assert not unknown, f"S3 calls with no IAM mapping here (add them, and to README): {unknown}"
    needed = set().union(*(CALL_ACTIONS[c] for c in calls))
    policy = next(b for b in _json_blocks(_section("Many hosts")) if "Statement" in b)
    granted = {a for s in policy["Statement"] for a in s["Action"]}
    assert granted == needed
    for statement in policy["Statement"]:
        bucket_level = {"s3:ListBucket", "s3:ListBucketMultipartUploads"}
        if set(statement["Action"]) <= bucket_level:
            assert statement["Resource"] == "arn:aws:s3:::promoter"
        else:
            assert not set(statement["Action"]) & bucket_level
            assert statement["Resource"] == "arn:aws:s3:::promoter/prod/*"


def test_readme_lifecycle_rule_aborts_incomplete_uploads_after_a_day() -> None:
    """The lifecycle JSON is what `put-bucket-lifecycle-configuration` takes."""
    rules = next(b for b in _json_blocks(_section("Many hosts")) if "Rules" in b)["Rules"]
    assert rules == [{"ID": "abort-incomplete-multipart-uploads", "Status": "Enabled",
                      "Filter": {"Prefix": "prod/"},
                      "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]
