"""train.py's own parts, which the library (mmpo/*.py) never imports: its settings (config.py),
the run's folder (folder.py), checkpoints and resume (checkpoint.py), the curriculum's schedule
(curriculum.py), what its caches are keyed by (fingerprint.py), and what a run reports
(report.py)."""
