"""The studio's server on a thread of the test process (the command serves it in its own)."""

from __future__ import annotations

import threading

from followup.service.studio import StudioServer


def run_in_thread(server: StudioServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="studio", daemon=True)
    thread.start()
    return thread
