"""`ray job submit -- viewstream train ... --address auto` on a `ray start --head` cluster
(127.0.0.1, token auth on), with checkpoints going to s3:// on moto's server."""
from __future__ import annotations

import json
import subprocess

import boto3
import pytest
import yaml

from deploy.local.ray_cluster import LocalRayCluster
from tests.helpers.s3_server import moto_s3_server
from tests.trainers.small_configs import small_config
from trainers.checkpoint import load_meta, load_state, resolve_checkpoint

pytestmark = pytest.mark.integration


def test_job_submit_trains_and_checkpoints_to_s3(fmnist_shards, tmp_path):
    with moto_s3_server(set_endpoint_env=True) as endpoint:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="runs")
        config = small_config(fmnist_shards["train"], "s3://runs/ssl", "submitted", epochs=1)
        config["run"]["out_dir"] = str(tmp_path / "metrics")
        path = tmp_path / "train.yaml"
        path.write_text(yaml.safe_dump(config))
        env_vars = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        with LocalRayCluster(head_cpus=2, worker_nodes=0, dashboard=True) as cluster:
            proc = subprocess.run(
                ["ray", "job", "submit", "--address", cluster.dashboard_url,
                 "--runtime-env-json", json.dumps({"env_vars": env_vars}),
                 "--", "viewstream", "train", str(path), "--address", "auto"],
                env=cluster.env, capture_output=True, text=True, timeout=600,
            )
            cluster.assert_loopback_only()
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "succeeded" in proc.stdout.lower()
        keys = [o["Key"] for o in boto3.client("s3", endpoint_url=endpoint)
                .list_objects_v2(Bucket="runs", Prefix="ssl/submitted/").get("Contents", [])]
        assert any(k.endswith("/state.pt") for k in keys), keys
        assert any(k.endswith("/metrics.jsonl") for k in keys), keys
        local = resolve_checkpoint("s3://runs/ssl/submitted")
        assert load_meta(local)["progress"]["step"] == 12
        assert any(k.startswith("backbone.") for k in load_state(local)["method"])
