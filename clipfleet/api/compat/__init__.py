"""Drop-in routes for the five services clipfleet replaces (/work/shared/seeds, issue 8).

One router per seed; each handler calls the same ClipfleetService as /v1.
"""

from __future__ import annotations

from clipfleet.api.compat import seed000, seed001, seed002, seed003, seed004

routers = [seed000.router, seed001.router, seed002.router, seed003.router, seed004.router]

__all__ = ["routers"]
