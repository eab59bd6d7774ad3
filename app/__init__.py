"""storestream's Faust app: ``faust -A app worker`` from the repository root.

Importing this package builds the app from ``faust.ini`` and the environment and registers
every table, agent, web view and command.
"""

from app.faust_app import app

# Registration side effects: tables, agents, views and commands attach themselves to ``app``.
import tables.loyalty  # noqa: F401  isort: skip
import agents.loyalty  # noqa: F401  isort: skip
from app import views  # noqa: F401  isort: skip

__all__ = ["app"]
