"""Ray Tune sweeps, one script per paper table (`python -m sweeps.table9`), plus `sweeps.search`.

`sweeps.launch` (the table scripts' CLI), `sweeps.experiment` (one Tune experiment),
`sweeps.race_loop` (a race's rounds), `sweeps.search` (search mode), `sweeps.trial` (inside a
worker), `sweeps.writer` (the results callback), `sweeps.shared`, `sweeps.calibrate` (its
`calibrate_on_ray`, a late import) and `sweeps.trackers` (Tune's W&B and MLflow callbacks, late)
import Ray; the table specs (qimera_core.tablespec), `sweeps.grid`, `sweeps.plan`, `sweeps.race`
and `sweeps.cli` are plain data and Python.
"""
