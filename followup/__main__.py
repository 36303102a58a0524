from __future__ import annotations

from followup.cli import main

main()
