"""Helpers that more than one program needs, none of them torch: the word lists and tagging that
prepare, convert, eval.py and the toy read (tagging.py, chair.py), the output folder that convert
and prepare share (output.py), one run per folder (lock.py), and small ones (util.py). The library
never imports them; they import no program."""
