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
from atoll.errors import ConfigError
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
