"""`python -m analysis serve`: a live page of a sweep's paper tables, served on 127.0.0.1.

The page (analysis/static/dashboard.html) polls one JSON endpoint whose state
`analysis.pagestate` builds from the same PaperTables as `analysis tables`; Plotly draws the
heatmap and the curves from the JavaScript bundled in the plotly wheel, so nothing loads from
the network. This module is the HTTP server: routes, the state's cache, downloads.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import render
from .load import (
    AnalysisError,
    load,
)
from .pagestate import DEFAULT_PORT, cell_trials, page_state
from .tables import TABLE_FUNCTIONS

log = logging.getLogger(__name__)

REFRESH_S = 10.0  # a live page's state is rebuilt at least this often
MIN_REBUILD_S = 2.0  # and at most this often (the page polls every 2 s)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


# ---- HTTP ------------------------------------------------------------------------------------
@functools.cache
def _static(name: str) -> bytes:
    if name == "plotly.min.js":
        from plotly.offline import get_plotlyjs
        return get_plotlyjs().encode("utf-8")
    return resources.files("analysis").joinpath(f"static/{name}").read_bytes()


@dataclass
class _Cache:
    """The last state and the files it was built from: rebuilt only when files change."""

    key: tuple = ()
    state: dict | None = None
    built: float = 0.0
    cost: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _fingerprint(directory: Path) -> tuple:
    files = []
    for f in sorted(directory.glob("*.parquet")) if directory.is_dir() else []:
        try:
            files.append((f.name, f.stat().st_mtime_ns))
        except FileNotFoundError:  # merged away between glob and stat
            pass
    return tuple(files)


class Handler(BaseHTTPRequestHandler):
    """Serves the page, its two scripts, the JSON state, a cell's trials and the downloads;
    any other path is 404, so no request reads a file it names."""

    directory: Path = Path("results")
    storage: str = ""
    cache: _Cache = _Cache()
    server_version = "qimera-dashboard"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if url.path in ("/", "/index.html"):
                self._send(_static("dashboard.html"), "text/html; charset=utf-8")
            elif url.path in ("/plotly.min.js", "/dashboard.js"):
                self._send(_static(url.path[1:]), "text/javascript; charset=utf-8")
            elif url.path == "/api/state":
                self._json(self._state())
            elif url.path == "/api/trials":
                self._json(self._trials(query.get("table", ""), query.get("cell", "")))
            elif url.path.startswith("/download/"):
                self._download(url.path.removeprefix("/download/"))
            else:
                self.send_error(HTTPStatus.NOT_FOUND, "not part of the dashboard")
        except AnalysisError as e:
            self.send_error(HTTPStatus.NOT_FOUND, str(e).splitlines()[0])

    def _state(self) -> dict:
        with self.cache.lock:
            key = _fingerprint(self.directory)
            if self.cache.state is None or self._due(key):
                start = time.monotonic()
                self.cache.state = page_state(self.directory, self.storage)
                self.cache.key, self.cache.built = key, time.monotonic()
                self.cache.cost = self.cache.built - start
            return self.cache.state

    def _due(self, key: tuple) -> bool:
        """Rebuild when files changed (or, while live, every REFRESH_S: elapsed time and ETA
        move even when no file does), but leave at least twice the last build's time
        between builds: with --serve the page shares the driver's CPU with the trials."""
        age = time.monotonic() - self.cache.built
        if age < max(MIN_REBUILD_S, 2 * self.cache.cost):
            return False
        return key != self.cache.key or (self.cache.state["live"] and age > REFRESH_S)

    def _trials(self, table: str, cell: str) -> dict:
        found = [t for t in self._state()["tables"] if t["name"] == table]
        if not found or not cell.isdigit():
            raise AnalysisError(f"no table {table!r} with cell {cell!r}")
        match = [c for c in found[0]["cells"] if c["id"] == int(cell)]
        if not match:
            raise AnalysisError(f"table {table} has no cell {cell}")
        return {"cell": match[0], "trials": cell_trials(self.directory, match[0]["hashes"])}

    def _download(self, name: str) -> None:
        """`table9.csv` / `table9.tex`: the files `analysis tables --compare-paper` writes."""
        stem, _, fmt = name.partition(".")
        if stem not in TABLE_FUNCTIONS or fmt not in ("csv", "tex"):
            raise AnalysisError(f"no download {name!r}; use /download/<table>.csv or .tex")
        table = TABLE_FUNCTIONS[stem](load(self.directory), compare_paper=True)
        body = table.cells.to_csv(index=False) if fmt == "csv" else render.to_latex(table)
        kind = "text/csv" if fmt == "csv" else "application/x-tex"
        self._send(body.encode("utf-8"), f"{kind}; charset=utf-8",
                   {"Content-Disposition": f'attachment; filename="{stem}.{fmt}"'})

    def _json(self, data: Any) -> None:
        self._send(json.dumps(data).encode("utf-8"), "application/json")

    def _send(self, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        log.debug("%s %s", self.address_string(), format % args)


def make_server(directory: Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                storage: str = "") -> ThreadingHTTPServer:
    """A server for `directory` (not started). Port 0 picks a free port."""
    handler = type("DashboardHandler", (Handler,),
                   {"directory": Path(directory).resolve(), "storage": storage,
                    "cache": _Cache()})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise AnalysisError(f"cannot serve on {host}:{port} ({e.strerror}); pass a free --port "
                            "(0 picks one)") from e
    server.daemon_threads = True
    if host not in LOOPBACK:
        log.warning("serving on %s: anyone who can reach this address can read the results "
                    "in %s (configs, metrics, error traces) without a password", host, directory)
        print(f"WARNING: --host {host} exposes the page and every result in {directory} "
              "(configs, metrics, error traces) to anyone who can reach this machine, "
              "without authentication; use 127.0.0.1 and an SSH tunnel instead")
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"


def serve_in_background(directory: Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                        storage: str = "") -> ThreadingHTTPServer:
    """Start serving on a daemon thread (what a sweep's --serve does); returns the server."""
    server = make_server(directory, host, port, storage)
    threading.Thread(target=server.serve_forever, name="dashboard", daemon=True).start()
    return server
