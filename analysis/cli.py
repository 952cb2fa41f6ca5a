"""`python -m analysis tables|plots|watch|serve|status`: paper tables, figures, and live views
of a sweep (files re-rendered, or a page in the browser)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from qimera_core import tablespec
from qimera_core.config import ArgumentParser

from . import render, resolve, status
from .load import AnalysisError, Results, load
from .tables import METRICS, make_tables, table_name

log = logging.getLogger(__name__)


class Progress:
    """A status line per step on stderr, with elapsed time, for work that takes seconds."""

    def __init__(self, quiet: bool = False) -> None:
        self.start, self.quiet = time.monotonic(), quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.start:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", type=Path, required=True,
                   help="directory with the sweep's trials-*.parquet and curves-*.parquet")
    p.add_argument("--out", type=Path, required=True, help="directory to write into")
    p.add_argument("--table", action="append", default=None, metavar="N",
                   help=f"table to make ({', '.join(tablespec.names())} or just the number); "
                        "repeat or comma-separate; default: every table with trials")
    p.add_argument("--metric", choices=sorted(METRICS), default="top1",
                   help="top1 = final accuracy (default); best_top1 = best epoch, chosen on the "
                        "test set (optimistic, labelled as such)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds each cell should have; cells with fewer show n "
                        "(default: the number of seeds found in the table)")
    p.add_argument("--compare-paper", action="store_true",
                   help="add the paper's value and Δ = ours - paper to each cell")
    add_stats_flags(p)


def add_stats_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("statistics (docs/statistics.md)")
    g.add_argument("--alpha", type=float, default=0.05,
                   help="level of the tie-with-best, axis and claim tests (default 0.05)")
    g.add_argument("--covariate", action="store_true",
                   help="axis and trend tests: add each run's start accuracy as a covariate "
                        "(final - start noise is smaller; see the docs)")
    g.add_argument("--robust", action="store_true",
                   help="axis tests: HC3 heteroscedasticity-robust ANOVA")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m analysis", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tables", help="write the paper tables as CSV, Markdown and LaTeX")
    _add_common(t)
    t.add_argument("--format", default="csv,md,tex", help="comma list of csv, md, tex")
    t.set_defaults(func=cmd_tables)
    p = sub.add_parser("plots", help="write the figures as PNG and PDF")
    _add_common(p)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="a trial's checkpoint directory: also draw Figure 5 (PCA) and 6 (samples)")
    p.add_argument("--classes", type=int, default=10,
                   help="classes shown in Figures 5 and 6 (the first N)")
    p.add_argument("--format", default="png,pdf", help="comma list of image formats")
    p.set_defaults(func=cmd_plots)
    w = sub.add_parser("watch", help="re-render tables and figures whenever new results land")
    _add_common(w)
    w.add_argument("--interval", type=float, default=30.0, help="seconds between checks")
    w.add_argument("--max-iterations", type=int, default=0,
                   help="stop after this many checks (0 = until Ctrl-C)")
    w.add_argument("--once", action="store_true",
                   help="render once and exit (= --max-iterations 1)")
    w.add_argument("--no-plots", action="store_true", help="tables and status only")
    w.set_defaults(func=cmd_watch)
    v = sub.add_parser("serve", help="a live page of the tables in a browser, on 127.0.0.1")
    v.add_argument("--results", type=Path, required=True,
                   help="directory with the sweep's Parquet files (running or finished)")
    v.add_argument("--port", type=int, default=8470, help="port (default 8470; 0 picks one)")
    v.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other exposes the results "
                        "to the network without a password: prefer an SSH tunnel)")
    v.add_argument("--storage", default="",
                   help="the sweep's Tune --storage, for the TensorBoard command on the page")
    v.set_defaults(func=cmd_serve)
    s = sub.add_parser("status", help="print trial counts, GPU-hours and what each table "
                                      "resolves")
    s.add_argument("--results", type=Path, required=True)
    add_stats_flags(s)
    s.set_defaults(func=cmd_status)
    return parser


def _names(args: argparse.Namespace) -> list[str] | None:
    if not args.table:
        return None
    return [table_name(t) for arg in args.table for t in arg.split(",") if t.strip()]


def _check_flags(args: argparse.Namespace) -> None:
    """Flags that can be wrong on their own, refused before the results are read."""
    if getattr(args, "table", None):
        _names(args)                                   # raises on an unknown table
    alpha = getattr(args, "alpha", None)
    if alpha is not None and not 0 < alpha < 1:
        raise AnalysisError(f"--alpha must be in (0, 1) (e.g. 0.05), got {alpha:g}")
    if getattr(args, "seeds", None) is not None and args.seeds < 1:
        raise AnalysisError(f"--seeds must be >= 1, got {args.seeds}")
    if getattr(args, "out", None) is not None and args.out.is_file():
        raise AnalysisError(f"--out {args.out} is a file; pass a directory (it is created)")


def _table_kwargs(args: argparse.Namespace) -> dict:
    return dict(metric=args.metric, seeds=args.seeds, compare_paper=args.compare_paper,
                alpha=args.alpha)


def write_tables(results: Results, args: argparse.Namespace, formats: list[str],
                 progress: Progress) -> list[Path]:
    written = []
    for table in make_tables(results, _names(args), **_table_kwargs(args)):
        counts = table.cells.loc[table.cells["kind"] == "ours", "status"].value_counts()
        paths = render.write_table(table, args.out, formats)
        paths += resolve.write(resolve.resolve(table, args.covariate, args.robust), args.out,
                               formats)
        progress(f"{table.name}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
                 + f" -> {', '.join(p.name for p in paths)}")
        written += paths
    return written + write_status(results, args.out)


def write_status(results: Results, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    frame = status.summary(results)
    frame.to_csv(out / "status.csv", index=False)
    (out / "status.md").write_text(status.to_markdown(frame), "utf-8")
    return [out / "status.csv", out / "status.md"]


def write_plots(results: Results, args: argparse.Namespace, formats: tuple[str, ...],
                progress: Progress) -> list[Path]:
    progress("preparing figures")
    from . import plots  # matplotlib/seaborn load only when figures are wanted

    names = _names(args)
    with_figure = [s.name for s in tablespec.specs(lambda s: bool(s.figure))]
    figure_tables = [n for n in (names or with_figure) if n in with_figure]
    present = set().union(*results.trials["tables"]) if not results.trials.empty else set()
    tables = make_tables(results, [n for n in figure_tables if n in present],
                         **_table_kwargs(args))
    written = []
    for stem, make in plots.figure_jobs(tables, results.curves, only=names):
        progress(f"drawing {stem}")
        written += plots.save(make(), args.out, stem, formats)
    return written


def cmd_tables(args: argparse.Namespace) -> int:
    progress = Progress()
    formats = render.parse_formats(args.format)
    results = load(args.results)
    progress(f"loaded {args.results}: {status.status_line(results)}")
    written = write_tables(results, args, formats, progress)
    if len(written) == 2:  # status.csv/md only
        progress("no finished trials yet: wrote the status summary only")
    progress(f"wrote {len(written)} files to {args.out}")
    return 0


def _image_formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip().lower().lstrip(".") for f in text.split(",") if f.strip())
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad or not formats:
        raise AnalysisError(f"--format takes a comma list of png, pdf, svg; got {text!r}")
    return formats


def cmd_plots(args: argparse.Namespace) -> int:
    progress = Progress()
    formats = _image_formats(args.format)
    if args.checkpoint is not None and not args.checkpoint.is_dir():
        raise AnalysisError(f"--checkpoint {args.checkpoint} is not a directory; pass a trial's "
                            "checkpoint directory (the one train() writes as out_dir/checkpoint)")
    results = load(args.results)
    progress(f"loaded {args.results}: {status.status_line(results)}")
    written = write_plots(results, args, formats, progress)
    if args.checkpoint is not None:
        written += write_sample_figures(args.checkpoint, args.out, formats, args.classes,
                                        progress)
    progress(f"wrote {len(written)} files to {args.out}")
    return 0


def write_sample_figures(checkpoint: Path, out: Path, formats: tuple[str, ...], classes: int,
                         progress: Progress) -> list[Path]:
    from . import plots, samples

    progress(f"loading {checkpoint}")
    trained = samples.load(checkpoint)
    progress("drawing fig5_pca (teacher features of real and generated images)")
    written = plots.save(samples.figure5(trained, classes=classes), out, "fig5_pca", formats)
    progress("drawing fig6_samples")
    return written + plots.save(samples.figure6(trained, classes=classes), out, "fig6_samples",
                                formats)


def _fingerprint(directory: Path) -> tuple:
    files = sorted(directory.glob("trials-*.parquet")) + sorted(directory.glob("curves-*.parquet"))
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def cmd_watch(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise AnalysisError(f"--interval must be > 0 seconds, got {args.interval}")
    limit = 1 if args.once else args.max_iterations
    progress, seen, i = Progress(), None, 0
    try:
        while True:
            i += 1
            seen = _watch_step(args, seen, progress)
            if limit and i >= limit:
                break
            time.sleep(args.interval)
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
    return 0


def _watch_step(args: argparse.Namespace, seen: tuple | None, progress: Progress) -> tuple | None:
    if not args.results.is_dir():
        progress(f"waiting for {args.results} to appear (Ctrl-C to stop)")
        return seen
    now = _fingerprint(args.results)
    if now == seen:
        return seen
    if not now:
        progress(f"waiting for results in {args.results} (Ctrl-C to stop)")
        return now
    results = load(args.results)
    try:
        write_tables(results, args, list(render.FORMATS), Progress(quiet=True))
        if not args.no_plots:
            write_plots(results, args, ("png",), Progress(quiet=True))
    except AnalysisError as e:  # e.g. only running trials so far: keep watching
        progress(f"not rendered yet: {e}")
    progress(f"{status.status_line(results)} -> {args.out} (next check in {args.interval:g}s, "
             "Ctrl-C to stop)")
    return now


def cmd_serve(args: argparse.Namespace) -> int:
    from . import serve

    if not args.results.is_dir():
        raise AnalysisError(f"results directory {args.results} does not exist; pass the "
                            "--results DIR that the sweep writes to")
    server = serve.make_server(args.results, args.host, args.port, args.storage)
    print(f"serving {args.results} at {serve.url_of(server)} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    results = load(args.results)
    print(status.summary(results).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for line in status.resolution_lines(results, args.alpha, args.covariate, args.robust):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        _check_flags(args)
        return args.func(args)
    except AnalysisError as e:
        print(f"python -m analysis {args.command}: error: {e}", file=sys.stderr)
        return 2
