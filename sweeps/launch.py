"""The CLI of every table script: plan the table's trials (sweeps.plan) and run them as one
Tune experiment (sweeps.experiment), or race them (sweeps.race_loop).

    python -m sweeps.table9 --smoke-test --storage /tmp/s --results /tmp/r
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from qimera_core import results, tablespec
from sweeps import grid, race
from sweeps.cli import Options, build_parser

# TrialDirName: Tune experiments saved before the split pickled it as sweeps.launch's, and
# restoring one looks for it here.
from sweeps.experiment import (  # noqa: F401
    TrialDirName,
    experiment_name,
    print_todo,
    resume,
    run_round,
    storage_path,
)
from sweeps.grid import Block, GridError
from sweeps.page import keep_open, open_page
from sweeps.plan import (
    plan_trials,
    skip_finished,
)
from sweeps.race_loop import run_race


# ---- a table script --------------------------------------------------------------------------
def main(table: str, blocks: Sequence[Block] | None = None, argv: list[str] | None = None,
         doc: str | None = None) -> int:
    """The CLI of every table script, `main("table9")` (the blocks of its registered spec,
    qimera_core.tablespec, unless given); returns the exit status."""
    if blocks is None:
        blocks = tablespec.get(table).blocks
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    parser = build_parser(table, doc)
    args = Options.of(parser.parse_args(argv))
    prefix = (f"{table}-smoke" if args.smoke_test else f"{table}-offline" if args.offline
              else table)
    try:
        configs = plan_trials(blocks, args)            # every trial validated; no Ray yet
        args = args.replace(storage=storage_path(args.storage))
        results_dir = args.results.expanduser().resolve()
        if args.seeds == "auto":
            return run_race(table, blocks, args, prefix, results_dir)
        if args.resume:
            return resume(table, prefix, args, results_dir)
        todo = skip_finished(table, configs, results_dir)
        page = open_page(table, args, results_dir)
    except (GridError, results.SchemaError, race.RaceError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"{table}: {len(configs)} trials, {len(configs) - len(todo)} reused, "
          f"{len(todo)} to run")
    axes = grid.swept_axes(blocks)
    if args.dry_run or not todo:
        print_todo(todo if args.dry_run else [], axes)
        return keep_open(page, table, 0) if not args.dry_run else 0
    try:
        status = run_round(table, todo, args, experiment_name(args, prefix), axes, results_dir)
    except GridError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return keep_open(page, table, status)


