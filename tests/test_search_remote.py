"""Searches against remote services started by the test: an `mlflow server` on 127.0.0.1 and a
real two-node Ray cluster on loopback."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import DM_TUNE, free_port, tiny_study

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _search(tmp_path: Path, study: dict, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return subprocess.run([DM_TUNE, "search", "--config", str(path), "--workspace", str(tmp_path / "ws"), *extra],
                          cwd=tmp_path, capture_output=True, text=True, timeout=480)


def _start_server(tmp_path: Path, port: int) -> tuple[subprocess.Popen, str]:
    """An `mlflow server` on 127.0.0.1:``port`` (its store in tmp_path, kept across restarts), answering."""
    mlflow = str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen(
        [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", (tmp_path / "artifacts").as_uri()],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("mlflow server did not start")
        time.sleep(0.5)
    return proc, uri


def _stop_server(proc: subprocess.Popen) -> None:
    """The server and its workers (its own process group), at once."""
    import os
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.fixture
def mlflow_server(tmp_path):
    proc, uri = _start_server(tmp_path, free_port())
    yield uri
    _stop_server(proc)


def test_search_logs_to_an_mlflow_server(tmp_path, mlflow_server):
    proc = _search(tmp_path, tiny_study("served", search={"num_samples": 2, "top_k": 1}, seeds=[0]),
                   "--tracking-uri", mlflow_server)
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("served")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    roles = Counter(r.data.tags.get("dmtune.role") for r in runs)
    assert roles == {"setting": 1, "trial": 2 + 3}
    trial = next(r for r in runs if r.data.tags.get("dmtune.role") == "trial")
    assert {a.path for a in client.list_artifacts(trial.info.run_id)} >= {"result.json", "weights.csv"}
    assert not (tmp_path / "ws" / "mlflow.db").exists()  # nothing went to the embedded store
    assert mlflow_server in proc.stdout
    assert "View run" not in proc.stdout and "View experiment" not in proc.stdout  # (MLflow's, 2 a trial)
    assert f"open {mlflow_server} in a browser" in proc.stdout  # not `mlflow ui`, which cannot open a server


def test_a_study_name_another_workspace_holds_on_the_server_is_refused_before_anything_is_written(
        tmp_path, mlflow_server):
    """The refusal came once the search had stored the study (and where it records): the workspace
    then held a study that never began, which --resume and a search elsewhere took as begun there.
    Now it comes before: a workspace the search created is removed, one that was there keeps only
    what it had."""
    from dm_tune.search._tracking import experiment_id

    first = tmp_path / "first"
    first.mkdir()
    experiment_id(mlflow_server, "served", None, first)  # the name is the first workspace's
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(tiny_study("served", search={"num_samples": 2, "top_k": 1}, seeds=[0])))
    kept, new = tmp_path / "kept", tmp_path / "new"
    kept.mkdir()
    for ws in (kept, new):
        proc = subprocess.run([DM_TUNE, "search", "--config", str(study), "--workspace", str(ws),
                               "--tracking-uri", mlflow_server], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("dm-tune: error: MLflow experiment 'served'")
        assert "another workspace" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not new.exists()
    assert not (kept / "studies").exists(), sorted(p.name for p in kept.rglob("*"))


def test_a_tracking_server_gone_mid_search_ends_it_as_interrupted_and_the_resume_records_everything(tmp_path):
    """The server killed while trials ran: each queued write waited out MLflow's retries (minutes
    each) and the search did not end for hours. Now the first write that fails (after MLflow's own
    retries, shortened here) ends the setting as interrupted once its trials end; the resume, with
    the server back, records every trial once."""
    import os

    port = free_port()
    server, uri = _start_server(tmp_path, port)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(tiny_study("gone", search={"num_samples": 4, "top_k": 1}, baselines=["cce"],
                                               seeds=[0], training={"epochs": 20})))
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    command = [DM_TUNE, "search", "--config", str(study), "--workspace", str(tmp_path / "ws"), "--tracking-uri", uri]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stderr:
            if "(finished," in line:
                break
        _stop_server(server)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert f"the MLflow server at {uri} stopped answering" in err and "--resume gone" in err
    assert "Traceback" not in err

    server, _ = _start_server(tmp_path, port)
    try:
        resumed = subprocess.run([DM_TUNE, "search", "--resume", "gone", "--workspace", str(tmp_path / "ws")],
                                 cwd=tmp_path, env=env, capture_output=True, text=True, timeout=480)
        assert resumed.returncode == 0, resumed.stderr
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("gone").experiment_id], max_results=100)
    finally:
        _stop_server(server)
    trials = Counter(r.data.tags["dmtune.trial_key"] for r in runs if r.data.tags.get("dmtune.role") == "trial")
    assert len(trials) == 4 + 2 and max(trials.values()) == 1  # every trial once
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_search_across_a_two_node_ray_cluster(tmp_path):
    from ray.cluster_utils import Cluster

    import ray

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    # A module of the standard library's name where the search is started: the connection probe
    # (a `python -c`) imported it instead, and failed ("exit status 1").
    (tmp_path / "inspect.py").write_text("raise ImportError('the current folder is on sys.path')\n")
    try:
        cluster.wait_for_nodes()
        # One configuration per Ray trial: seven trials, two at a time on one CPU per node, so that
        # both nodes take some (two populations could both land on one node, one after the other).
        proc = _search(tmp_path, tiny_study("cluster", search={"num_samples": 3, "top_k": 1}, seeds=[0, 1],
                                            population_size=1),
                       "--address", cluster.address, "--storage-path", str(tmp_path / "shared"))
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "shared" / "cluster").is_dir()  # results on the shared storage path

        # A folder one node cannot see (here, where the two nodes share a disk, a probe that says
        # so on the other node) is refused before any trial, with the nodes that cannot see it.
        from dm_tune.errors import UserError
        from dm_tune.search._preflight import check_shared_storage

        ray.init(address=cluster.address)
        head = ray.get_runtime_context().get_node_id()

        def only_the_head_sees(path: str) -> bool:
            import os

            import ray
            return os.path.isfile(path) and ray.get_runtime_context().get_node_id() == head

        check_shared_storage(tmp_path / "shared", "--storage-path")
        with pytest.raises(UserError, match=r"^--storage-path .*/local/ray: not visible from 1 of the Ray cluster's 2 "
                                            r"nodes \(127\.0\.0\.1\): Ray writes each trial's results"):
            check_shared_storage(tmp_path / "local" / "ray", "--storage-path", only_the_head_sees)
        assert not (tmp_path / "local").exists()  # made for the marker, removed again
    finally:
        ray.shutdown()
        cluster.shutdown()

    client = MlflowClient(f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cluster")
    trials = [r for r in client.search_runs([exp.experiment_id], max_results=100)
              if r.data.tags.get("dmtune.role") == "trial"]
    assert len(trials) == 3 + (1 + 2) * 2
    assert {r.data.tags["dmtune.status"] for r in trials} == {"finished"}
    nodes = {r.data.tags["dmtune.node_id"] for r in trials}
    assert len(nodes) == 2, nodes  # trials ran on both nodes


def _auth_proxy(target: str, user: str, password: str):
    """A reverse proxy on 127.0.0.1 that asks every request, /health too, for HTTP basic auth and
    forwards the ones that carry it to ``target`` (as nginx in front of a team's MLflow server)."""
    import base64
    import http.server
    import threading
    import urllib.error

    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    class Proxy(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _forward(self) -> None:
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
            request = urllib.request.Request(target + self.path, data=body, method=self.command,
                                             headers={"Content-Type": self.headers.get("Content-Type", "")})
            try:
                with urllib.request.urlopen(request, timeout=30) as r:
                    status, payload, kind = r.status, r.read(), r.headers.get("Content-Type", "")
            except urllib.error.HTTPError as e:
                status, payload, kind = e.code, e.read(), e.headers.get("Content-Type", "")
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_an_mlflow_server_behind_a_password_is_asked_with_mlflows_credentials(tmp_path, mlflow_server, monkeypatch):
    """The search asked /health without the credentials MLflow's client sends, and refused an MLflow
    server behind an authenticating proxy as "not an MLflow server (HTTP Error 401)" although every
    request the search makes would carry them. Without them it is refused, saying which variables
    MLflow reads them from; the reports ask the same question."""
    from dm_tune.errors import UserError
    from dm_tune.search._preflight import check_tracking
    from reports._load import load_runs

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    proxy, uri = _auth_proxy(mlflow_server, "team", "s3cret")
    try:
        for ask in (check_tracking, load_runs):
            with pytest.raises(UserError, match="code 401.*MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"):
                ask(uri)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "team")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
        check_tracking(uri)
        with pytest.raises(UserError, match="no dm-tune trial runs .* existing experiments: Default"):
            load_runs(uri)  # (it read the store: there is no study in it yet)
    finally:
        proxy.shutdown()
        proxy.server_close()
