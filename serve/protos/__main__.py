"""``python -m serve.protos``: generate the switchboard.v1 gRPC Python code from ``sessions.proto``."""

import argparse

from . import PROTO, build

parser = argparse.ArgumentParser(prog="python -m serve.protos", description=__doc__.split(":", 1)[1].strip())
parser.add_argument("--force", action="store_true", help="regenerate even when up to date")
args = parser.parse_args()
written = build(force=args.force)
print(f"generated {', '.join(p.name for p in written)} from {PROTO.name}" if written else f"{PROTO.name}: up to date")
