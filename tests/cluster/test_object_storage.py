"""Object storage for real: `raygbm preprocess` and `raygbm predict` read s3:// shards through an
S3-compatible server on loopback (moto's server mode), with the credentials and the endpoint taken from
the environment, as on AWS (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``). The
server checks credentials (moto's IAM authentication), so a wrong secret is refused as AWS refuses it.

Each command starts its own embedded Ray, whose workers inherit the command's environment (the read
tasks open the shards themselves). Runs in the cluster lane, one Ray at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from raygbm.config import RegistryConfig
from raygbm.data.preprocess import LocalRunner
from raygbm.predict import predict_dataset
from raygbm.registry.store import Registry, local_bundle
from raygbm.runtime import free_port
from tests.cluster.test_serve_cli import _register_a_model
from tests.conftest import make_shards
from tests.helpers import raygbm_home, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BUCKET = "raygbm-shards"
# Allow everything to the one user; moto evaluates the policy like IAM does.
POLICY = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with authentication on, one IAM user and its key, and a bucket holding
    three shards; yields (the environment a user would have, the local copy of the shards)."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = str(Path(sys.executable).with_name("moto_server"))
    # The first three requests (the user, its key, its policy) are let through; every later one is checked.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        def up() -> bool:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=2)
                return True
            except OSError:
                return server.poll() is not None and pytest.fail("moto_server exited")

        wait_until(up, 60, interval=0.2, message="moto server")
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="raygbm")
        key = iam.create_access_key(UserName="raygbm")["AccessKey"]
        iam.put_user_policy(UserName="raygbm", PolicyName="all", PolicyDocument=POLICY)
        fs = pafs.S3FileSystem(endpoint_override=endpoint, access_key=key["AccessKeyId"],
                               secret_key=key["SecretAccessKey"], region="us-east-1", allow_bucket_creation=True)
        fs.create_dir(BUCKET)
        local = make_shards(tmp_path_factory.mktemp("data"), rows=6000, shards=3, seed=7)
        for shard in sorted(local.iterdir()):
            pafs.copy_files(str(shard), f"{BUCKET}/data/{shard.name}", destination_filesystem=fs)
        user_env = {**os.environ, "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
                    "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
        for name in ("RAY_ADDRESS", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            user_env.pop(name, None)
        yield user_env, local
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def _raygbm(args: list[str], env: dict[str, str], home: Path, cwd: Path) -> subprocess.CompletedProcess:
    raygbm = str(Path(sys.executable).with_name("raygbm"))
    return subprocess.run([raygbm, *args], env={**env, "RAYGBM_HOME": str(home)}, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_the_data_stage_and_predict_read_s3_shards(s3, tmp_path):
    env, local = s3
    home = tmp_path / "home"
    _register_a_model(home, tmp_path / "train")
    uri = f"s3://{BUCKET}/data"

    run = _raygbm(["preprocess", "--data", uri, "--label", "label", "--set", "data.drop=[id]"], env, home, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "6,000 rows in 3 shards" in run.stdout
    reports = [json.loads((d / "data_report.json").read_text()) for d in (home / "runs").glob("preprocess-*")]
    [report] = [r for r in reports if r["source"] == uri]  # beside the model's own run, from local shards
    assert report["rows_read"] == 6000 and report["shards"] == 3
    assert report["rows_out_total"] == 6000 - report["rows_missing_label"]

    scored = _raygbm(["predict", "--data", uri, "--output", str(tmp_path / "scored"), "--json"], env, home, tmp_path)
    assert scored.returncode == 0, scored.stdout + scored.stderr
    assert json.loads(scored.stdout)["rows"] == 6000
    # The same rows scored from the local copy, in one process: the same predictions, row for row.
    with raygbm_home(home):
        _, bundle = local_bundle(Registry(RegistryConfig()), "champion")
        predict_dataset(str(local), tmp_path / "local", bundle, runner=LocalRunner())
    ours = pq.read_table(tmp_path / "scored").sort_by("id")
    theirs = pq.read_table(tmp_path / "local").sort_by("id")
    assert ours.num_rows == theirs.num_rows == 6000
    assert np.array_equal(ours["id"].to_numpy(), theirs["id"].to_numpy())
    assert np.allclose(ours["score"].to_numpy(), theirs["score"].to_numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", ["wrong secret", "missing bucket"])
def test_object_storage_errors_are_one_line_naming_the_uri(s3, tmp_path, case):
    env, _ = s3
    uri = f"s3://{BUCKET}/data" if case == "wrong secret" else "s3://no-such-bucket/data"
    if case == "wrong secret":
        env = {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    run = _raygbm(["preprocess", "--data", uri, "--label", "label"], env, tmp_path / "home", tmp_path)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stdout + run.stderr
    assert len(lines) == 1 and uri in lines[0] and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "home" / "runs").exists() or not any((tmp_path / "home" / "runs").iterdir())
