"""`shifttune serve tiny` (its HTTP process, tokenizer and limits) over the stand-in core of `fakecore.py`:

    python front.py PORT [h11|httptools] [asyncio|uvloop]

FREEZE=1 freezes the HTTP process's heap once it is up (`gc.freeze`, as the server did in 65e3afe-2501677)."""

from __future__ import annotations

import gc
import os
import sys

import uvicorn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fakecore  # noqa: E402

import shifttune.server.async_engine as async_engine  # noqa: E402
from shifttune.config import EngineConfig  # noqa: E402
from shifttune.server import launcher  # noqa: E402

async_engine.run_engine_core = fakecore.run  # NOTE: also in the spawned core, which imports this file again
if os.environ.get("FREEZE"):
    _start = async_engine.AsyncEngine.start

    def _start_and_freeze(self) -> None:
        _start(self)
        gc.collect()
        gc.freeze()

    async_engine.AsyncEngine.start = _start_and_freeze


def main() -> None:
    port = int(sys.argv[1])
    http, loop = (sys.argv[2:4] + ["auto", "auto"])[:2] if len(sys.argv) > 2 else ("auto", "auto")
    config_init = uvicorn.Config.__init__

    def with_parser(self, app, **kw) -> None:
        config_init(self, app, **(kw | {"http": http, "loop": loop}))

    uvicorn.Config.__init__ = with_parser
    settings = launcher.ServerSettings(port=port, log_level="warning")
    raise SystemExit(launcher.serve(EngineConfig(model="tiny", device="cpu"), settings))


if __name__ == "__main__":
    main()
