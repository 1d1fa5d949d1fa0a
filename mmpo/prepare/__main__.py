"""``python -m mmpo.prepare``: --help and option errors answer at once, before torch is imported."""
import sys

from mmpo import cli
from mmpo.prepare.command import build_parser, check_options

if cli.run(lambda: check_options(build_parser().parse_args(sys.argv[1:])), light=True):
    sys.exit(2)

from mmpo.prepare.build import run  # noqa: E402  (torch, transformers)

sys.exit(run())
