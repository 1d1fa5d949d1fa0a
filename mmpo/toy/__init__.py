"""The controlled experiment, ``python -m mmpo.toy`` (a program: the library never imports it)."""
