"""eval.py's parts, which the library (mmpo/*.py) never imports: which model each column is
(columns.py) and the metrics as pure functions of answers and log-probs (metrics.py; AMBER in
amber.py; CHAIR's word reading, shared with convert and the toy, in mmpo/common/chair.py)."""
