"""Ray Tune sweeps, one script per paper table (`python -m sweeps.table9`), plus `sweeps.search`.

Only `sweeps.launch` imports Ray; the table scripts and `sweeps.grid` are plain data and Python.
"""
