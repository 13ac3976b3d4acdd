"""``python -m tests.support.consul_emulator --port 8500``: serve the emulator until interrupted."""

from ._server import main

main()
