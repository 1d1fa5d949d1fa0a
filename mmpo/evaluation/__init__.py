"""eval.py's parts, a program the library (mmpo/*.py) never imports: which model each column is
(columns.py) and the metrics as pure functions of answers and log-probs (metrics.py; CHAIR in
chair.py, AMBER in amber.py)."""
