"""storestream's Faust app: ``faust -A app worker`` from the repository root.

Importing this package builds the app from ``faust.ini`` and the environment and registers
every table, agent, web view and command (registration is the side effect of each import).
"""
# ruff: noqa: F401

from app.faust_app import app

# isort: off
import tables.loyalty
import tables.offers
import tables.deadletters
import tables.repartition
import agents.loyalty
import agents.offers
import agents.delivery
import agents.associates
import agents.repartition
from app import commands
from app.web import live, views
from app.routing import misplaced

misplaced.install()

# isort: on

__all__ = ["app"]
