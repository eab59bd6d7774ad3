"""`make demo` end to end (its --once mode), on free ports: the recipe's tables are printed,
Kris's dog makes him a french poodle lover, and the offers counter follows the offers delivered."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from app.dev.devstack import free_port
from tests.integration.harness import ROOT

pytestmark = pytest.mark.integration


def test_demo_prints_the_recipe_tables_and_stops_cleanly(tmp_path: object) -> None:
    env = {
        **os.environ,
        "BROKER_URL": f"kafka://localhost:{free_port()}",
        "REDIS_URL": f"redis://localhost:{free_port()}/0",
        "WEB_PORT": str(free_port()),
        "APP_DATADIR": str(tmp_path),
        "STORESTREAM_CONFIG": str(ROOT / "faust.ini"),
    }
    done = subprocess.run([sys.executable, "-m", "app.dev.demo", "--once"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    before, after = out.split("Let's buy him a dog", 1)
    assert "| kris    | 74.28  | CLIMBING     |" in before
    assert "| yeva    | 5     | 5        | true          |" in before
    assert "| kris    | [coffee] | loose_leaf     |" in before
    assert "| kris    | 324.27 | SILVER       |" in after
    assert "/customers/kris/" in after and "Live store page" in after

    # The recipe's point: after the dog, Kris qualifies for promotion_french_poodle.
    def poodle_table(text: str) -> str:
        return text.split(" promotion_french_poodle ", 1)[1].split(" promotion_loose_leaf ", 1)[0]

    assert "kris" not in poodle_table(before), out
    assert re.search(r"\| kris +\| \[beret, dog\] +\| french_poodle +\|", poodle_table(after)), out
    assert "| kris    | [coffee] | loose_leaf     |" in after.split(" promotion_loose_leaf ", 1)[1]

    # The offers counter is refreshed while the shoppers walk, and counts what was delivered.
    delivered = [int(n.replace(",", "")) for n in re.findall(r"offers delivered: ([\d,]+)", after)]
    assert delivered and delivered[-1] > 0, out
    assert delivered == sorted(delivered) and len(set(delivered)) > 1, out
