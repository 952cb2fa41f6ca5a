"""Ray Tune sweeps, one script per paper table (`python -m sweeps.table9`), plus `sweeps.search`.

Only `sweeps.launch` (driving Ray and Tune), `sweeps.trial` (inside a worker), `sweeps.writer`
(the results callback), `sweeps.shared`, `sweeps.calibrate` (its `calibrate_on_ray`, a late
import) and `sweeps.trackers` (Tune's W&B and MLflow callbacks, late) import Ray; the table
scripts, `sweeps.grid`, `sweeps.plan` and `sweeps.cli` are plain data and Python.
"""
