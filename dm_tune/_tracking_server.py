"""Whether an http(s) tracking URI is an MLflow server that answers, asked the way MLflow's own
client asks: with the credentials and TLS settings its environment variables give
(MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN,
MLFLOW_TRACKING_INSECURE_TLS, ...). The search and the reports ask it before anything else: MLflow's
client retries a server that does not answer for minutes, and a web server that is not MLflow's
fails its first request with a traceback that carries the server's error page."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from dm_tune.errors import UserError, check_reachable, parse_url

CONNECT_TIMEOUT_S = 3.0
REQUEST_TIMEOUT_S = 10


def quieten_store_migrations() -> None:
    """MLflow configures its loggers when imported: alembic's INFO lines (9 each time MLflow 3.9 opens
    its sqlite store) quietened after, for the search and the report alike."""
    import logging

    import mlflow  # noqa: F401 - configures its loggers on import

    logging.getLogger("alembic").setLevel(logging.WARNING)


@contextlib.contextmanager
def _one_quick_request() -> Iterator[None]:
    """MLflow's requests without retries and within REQUEST_TIMEOUT_S while the probe asks (its
    documented environment variables, read at each request), as they were afterwards."""
    saved = {name: os.environ.get(name) for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(REQUEST_TIMEOUT_S)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_server(uri: str, flag: str = "--tracking-uri") -> None:
    """UserError, naming ``flag`` and ``uri``, unless the MLflow server at ``uri`` (http or https)
    answers an API request: nothing listens there, it is not MLflow's, or it refuses this client."""
    parsed = parse_url(flag, uri)
    host = parsed.hostname or "localhost"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    check_reachable(host, port, f"{flag} {uri}", CONNECT_TIMEOUT_S)
    from mlflow.tracking import MlflowClient

    try:
        with _one_quick_request():
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:  # (MlflowException, or a requests error a server's broken answer gives)
        said = " ".join(str(e).split(" Response body:")[0].split())  # (not the page that came with it)
        said = said[:300] + ("..." if len(said) > 300 else "")
        hint = ""
        if any(f"error code {code}" in said for code in (401, 403)):
            hint = (": the server asks for credentials, which MLflow sends from MLFLOW_TRACKING_USERNAME and "
                    "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN")
        raise UserError(f"{flag} {uri}: not an MLflow tracking server that answers ({said}){hint}") from None
