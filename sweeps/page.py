"""`--serve` for the sweep scripts: the live page of `python -m analysis serve`, for the sweep's
own `--results`, served from the driver while the sweep runs and after it ends (until Ctrl-C)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sweeps.grid import GridError


def add_page_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("live page")
    g.add_argument("--serve", action="store_true",
                   help="serve a page of the table filling in (from --results) and print its "
                        "URL; it stays up after the sweep until Ctrl-C")
    g.add_argument("--serve-port", type=int, default=8470,
                   help="port of the page (default 8470; 0 picks a free one)")
    g.add_argument("--serve-host", default="127.0.0.1",
                   help="address of the page (default 127.0.0.1; any other exposes the results "
                        "without a password: reach it through an SSH tunnel instead)")


def open_page(table: str, args: argparse.Namespace, results_dir: Path) -> Any:
    """With --serve, start the page before any expensive work (a busy port fails in a
    second); returns the server, or None without --serve."""
    if not getattr(args, "serve", False):
        return None
    try:
        import plotly  # noqa: F401 - the page's charts; fail before Ray, not on first request

        from analysis import serve
        from analysis.load import AnalysisError
    except ImportError as e:
        raise GridError(f"--serve needs the page's libraries ({e.name} is missing); "
                        'pip install -e ".[sweep,analysis]"') from e
    try:
        server = serve.serve_in_background(results_dir, args.serve_host, args.serve_port,
                                           str(getattr(args, "storage", "")))
    except AnalysisError as e:
        raise GridError(f"--serve: {e}") from e
    print(f"{table}: live page at {serve.url_of(server)} (tables fill in as trials report)",
          flush=True)
    return server


def keep_open(page: Any, table: str, code: int) -> int:
    """After the sweep: keep serving the finished results until Ctrl-C, then return `code`."""
    if page is None:
        return code
    from analysis.serve import url_of

    print(f"{table}: sweep done; the page stays up at {url_of(page)} (Ctrl-C to stop)",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        page.shutdown()
        page.server_close()
    return code
