"""``python -m mmpo.convert``: no torch, no transformers; see formats.py."""
import sys

from mmpo.convert.formats import run

sys.exit(run())
