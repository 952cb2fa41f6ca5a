"""Ray Tune sweeps, one script per paper table (`python -m sweeps.table9`), plus `sweeps.search`.

Only `sweeps.launch` (driving Ray and Tune), `sweeps.trial` (inside a worker), `sweeps.writer`
(the results callback) and `sweeps.shared` import Ray; the table scripts, `sweeps.grid`,
`sweeps.plan` and `sweeps.cli` are plain data and Python.
"""
