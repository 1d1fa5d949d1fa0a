"""The benchmark, ``python -m mmpo.bench`` (a program: the library never imports it)."""
