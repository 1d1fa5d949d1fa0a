"""``python -m mmpo.convert``: no torch, no transformers; see command.py."""
import sys

from mmpo.convert.command import run

sys.exit(run())
