"""The storage root on an object store (issue 20): paths built through pyarrow.fs, the S3 settings of
cluster.yaml and the variables they become (never a key), `atoll storage up|down|status|env` on a real
SeaweedFS server, the demo export and the registry's aliases on S3. No Ray cluster."""

from __future__ import annotations

import concurrent.futures
import os
import stat
import uuid
from pathlib import Path

import pytest
from atoll import data, filesystems, jobs, objectstore
from atoll.config import load_spec
from atoll.errors import ConfigError, RegistryError
from atoll.registry import Registry
from atoll.specs import S3Settings
from conftest import REPO, run_cli


@pytest.mark.parametrize(("root", "parts", "joined"), [
    ("s3://bucket/prefix", ("runs", "t1"), "s3://bucket/prefix/runs/t1"),
    ("s3://bucket/prefix/", ("sweeps",), "s3://bucket/prefix/sweeps"),
    ("gs://b", ("datasets", "digits.parquet"), "gs://b/datasets/digits.parquet"),
])
def test_a_uri_root_stays_a_uri(root: str, parts: tuple[str, ...], joined: str) -> None:
    assert filesystems.join(root, *parts) == joined and filesystems.is_remote(root)


def test_a_local_root_becomes_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert filesystems.join("~/st", "runs") == str(tmp_path / "st" / "runs")
    assert filesystems.join("file://" + str(tmp_path), "x") == str(tmp_path / "x")
    assert not filesystems.is_remote(str(tmp_path)) and not filesystems.is_remote("file:///tmp/x")
    fs, path = filesystems.resolve("~/st")
    assert type(fs).__name__ == "LocalFileSystem" and path == str(tmp_path / "st")


def test_s3_settings_become_the_standard_variables_and_never_a_key(tmp_path: Path) -> None:
    settings = S3Settings(endpoint="http://127.0.0.1:8333", region="eu-west-1", credentials="file",
                          credentials_file=str(tmp_path / "creds"))
    env = filesystems.environment(settings)
    assert env == {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1",
                   "AWS_ENDPOINT_URL": "http://127.0.0.1:8333", "AWS_EC2_METADATA_DISABLED": "true",
                   "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "creds")}
    assert filesystems.environment(S3Settings()) == {"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    assert not set(filesystems.FORWARDED_ENV) & set(filesystems.SECRET_ENV)


@pytest.mark.parametrize(("section", "says"), [
    ("{endpoint: 127.0.0.1:8333}", "metadata.atoll.s3.endpoint: '127.0.0.1:8333' is not the URL of an S3 API"),
    ("{credentials: vault}", "metadata.atoll.s3.credentials: Input should be 'env' or 'file'"),
    ("{secret_key: abc}", "metadata.atoll.s3.secret_key: unknown key"),
])
def test_a_bad_s3_section_is_one_line_naming_the_field(section: str, says: str, tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text((REPO / "cluster.yaml").read_text().replace("  atoll:\n", f"  atoll:\n    s3: {section}\n", 1))
    with pytest.raises(ConfigError) as err:
        load_spec(config)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_jobs_get_where_the_store_is_but_never_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/etc/atoll/creds")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-forward-me")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIADONOTFORWARD")
    env = jobs.runtime_env(None)["env_vars"]
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" and env["AWS_SHARED_CREDENTIALS_FILE"] == "/etc/atoll/creds"
    assert "do-not-forward-me" not in str(env) and "AKIADONOTFORWARD" not in str(env)


def test_storage_up_is_private_reused_and_prints_no_secret(s3_store: objectstore.StoreInfo) -> None:
    folder = Path(s3_store.credentials_file).parent
    for name in ("credentials", "identities.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    secret = next(line.split("=", 1)[1].strip() for line in Path(s3_store.credentials_file).read_text().splitlines()
                  if line.startswith("aws_secret_access_key"))
    again = run_cli("storage", "up", "--port", s3_store.endpoint.rsplit(":", 1)[1], "--bucket", "atoll-test")
    status, env = run_cli("storage", "status"), run_cli("storage", "env", "--bucket", "atoll-test")
    assert again.returncode == status.returncode == env.returncode == 0, again.stderr + status.stderr + env.stderr
    assert "already up" in again.stdout and s3_store.endpoint in status.stdout
    assert f"export AWS_ENDPOINT_URL={s3_store.endpoint}" in env.stdout
    assert "export ATOLL_STORAGE=s3://atoll-test/storage" in env.stdout
    for output in (again, status, env):
        assert secret not in output.stdout + output.stderr
    assert objectstore.current().pid == s3_store.pid  # the same server, not a second one


def test_the_demo_export_writes_objects_not_a_local_folder_named_s3(s3_store: objectstore.StoreInfo, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    root = f"s3://atoll-test/demo-{uuid.uuid4().hex[:8]}"
    paths = data.prepare_demo(root, "diabetes")
    assert paths["train"] == f"{root}/datasets/diabetes.parquet"
    fs, path = filesystems.resolve(paths["train"])
    assert isinstance(fs, pafs.S3FileSystem) and pq.read_table(path, filesystem=fs).num_rows == 398
    assert data.prepare_demo(root, "diabetes") == paths  # exported once
    assert list(tmp_path.iterdir()) == [] and not Path("s3:").exists()


def test_concurrent_alias_moves_on_s3_lose_nothing(s3_store: objectstore.StoreInfo, tmp_path: Path) -> None:
    import torch

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"w": torch.ones(2)}, ckpt / "model.pt")
    root = f"s3://atoll-test/aliases-{uuid.uuid4().hex[:8]}"
    reg = Registry(root)
    for _ in range(3):
        reg.register("m", str(ckpt), metrics={}, spec={})

    def promote(i: int) -> None:  # each thread its own Registry: no shared state but the store
        Registry(root).set_alias("m", 1 + i % 3, f"a{i}")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(promote, range(24)))
    assert reg.aliases("m") == {f"a{i}": 1 + i % 3 for i in range(24)}  # a compare-and-swap: none lost
    reg.remove_alias("m", "a0")
    assert "a0" not in reg.aliases("m") and len(reg.aliases("m")) == 23


def test_weed_is_the_pinned_binary() -> None:
    import subprocess

    out = subprocess.run([objectstore.weed_binary(), "version"], capture_output=True, text=True, timeout=30)
    assert " 4.48 " in out.stdout, out.stdout
    assert os.access(objectstore.weed_binary(), os.X_OK)


def test_status_warns_of_a_local_root_on_a_cluster_of_several_nodes() -> None:
    from atoll import status

    two = [{"alive": True}, {"alive": True}, {"alive": False}]
    assert "nodes share no disk" in status.storage_warning(two, "~/.atoll/storage")
    assert status.storage_warning(two, "s3://team/atoll") is None
    assert status.storage_warning(two[:1], "~/.atoll/storage") is None  # one node: its disk is the only one


# ------------------------------------------------------------------------------------------------
# Issue 32, item 12: what the store refuses is one line naming the bucket and the fix, never a traceback


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["wrong credentials", "missing bucket", "unreachable endpoint"])
def test_store_refusals_in_models_commands_are_one_line_naming_the_bucket(
        case: str, s3_store: objectstore.StoreInfo, tmp_path: Path) -> None:
    import torch

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"w": torch.ones(2)}, ckpt / "model.pt")
    root = f"s3://atoll-test/refusals-{uuid.uuid4().hex[:8]}"
    Registry(root).register("m", str(ckpt), metrics={}, spec={})  # a registry that works, until ...
    env, says = {"ATOLL_STORAGE": root}, ""
    if case == "wrong credentials":
        wrong = tmp_path / "credentials"
        wrong.write_text("[default]\naws_access_key_id = ATOLLWRONG\naws_secret_access_key = not-the-secret\n")
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(wrong)
        says = "refused the credentials for bucket 'atoll-test'"
    elif case == "missing bucket":
        bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
        env["ATOLL_STORAGE"] = f"s3://{bucket}/atoll"
        says = f"bucket '{bucket}' does not exist at {s3_store.endpoint}"
    else:
        endpoint = f"http://127.0.0.1:{_closed_port()}"
        env["AWS_ENDPOINT_URL"] = endpoint
        says = f"cannot reach {endpoint} for bucket 'atoll-test'"
    for command in (["models", "list"], ["models", "promote", "m:1", "production"]):
        result = run_cli(*command, env=env, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith("error: storage ") and says in lines[0], lines[0]
    assert Registry(root).get("m").version == 1  # nothing was written on the way


def test_each_kind_of_refusal_names_its_fix() -> None:
    import botocore.exceptions as boto

    def said(exc: Exception) -> str:
        translated = filesystems.store_error(exc, "s3://team/atoll")
        assert translated is not None and "\n" not in str(translated)
        return str(translated)

    def client_error(code: str, message: str) -> Exception:
        return boto.ClientError({"Error": {"Code": code, "Message": message, "BucketName": "team"}}, "GetObject")

    assert "AWS_REGION" in said(OSError("When getting information for key 'atoll/x' in bucket 'team': AWS Error "
                                        "UNKNOWN (HTTP status 301) during HeadObject operation: No response body."))
    assert "metadata.atoll.s3.region" in said(client_error("PermanentRedirect", "use the eu-west-1 endpoint"))
    assert "expired" in said(client_error("ExpiredToken", "The provided token has expired."))
    assert "renew them" in said(boto.NoCredentialsError())
    assert "cannot reach" in said(boto.EndpointConnectionError(endpoint_url="https://s3.example"))
    assert "bucket 'gone' does not exist" in said(OSError("When listing objects under key 'x' in bucket 'gone': "
                                                          "AWS Error NO_SUCH_BUCKET during ListObjectsV2"))
    assert filesystems.store_error(ValueError("a bug"), "s3://team/atoll") is None  # a bug stays a traceback
    assert filesystems.store_error(OSError("disk full"), "/srv/atoll") is None  # the OS said it already


def test_an_unreadable_aliases_file_on_s3_is_never_written_over(s3_store: objectstore.StoreInfo,
                                                                 tmp_path: Path) -> None:
    import torch

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"w": torch.ones(2)}, ckpt / "model.pt")
    reg = Registry(f"s3://atoll-test/corrupt-{uuid.uuid4().hex[:8]}")
    reg.register("m", str(ckpt), metrics={}, spec={})
    reg.set_alias("m", 1, "production")
    fs, path = filesystems.resolve(f"{reg.root}/registry/m/aliases.json")
    with fs.open_output_stream(path) as f:
        f.write(b'{"production": 1, "stag')  # cut short
    with pytest.raises(RegistryError, match=r"aliases\.json is unreadable .* left as it is"):
        reg.set_alias("m", 1, "staging")
    with fs.open_input_stream(path) as f:
        assert f.read() == b'{"production": 1, "stag'
