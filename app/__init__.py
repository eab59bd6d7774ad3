"""storestream's Faust app: ``faust -A app worker`` from the repository root.

Importing this package builds the app from ``faust.ini`` and the environment and registers
every table, agent, web view and command (registration is the side effect of each import).
"""

import tables.loyalty
from app.faust_app import app

import tables.offers  # noqa: F401  isort: skip
import agents.loyalty

import agents.offers  # noqa: F401  isort: skip
from app import commands, live, views  # noqa: F401  isort: skip

__all__ = ["app"]
