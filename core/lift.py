"""Control group and lift: who is held out, and what the offers of a promotion did.

No I/O and no framework imports.

Control group
    ``CONTROL_GROUP_PCT`` percent of shoppers (0 by default) never receive an offer: what they
    would have been offered is recorded as *held out*. Membership is a stable hash of the uid
    (SHA-256, in steps of 0.01 %), the same on every worker and across restarts, and nested:
    a shopper held out at 5 % is held out at 10 % too.

Figures
    Per promotion and group (sent / held out): offers, offers redeemed at least once
    (conversion = redeemed / offers), redemptions and their revenue in cents. The lift is the
    relative difference of the two conversions, ``sent / held_out - 1``, with a 95 % confidence
    interval by the log method for a ratio of two proportions (Katz et al., 1978); it is
    ``None`` while either group has no conversion yet.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import Any

#: Two-sided 95 % normal quantile.
Z95 = 1.959963984540054
#: Control-group resolution: hashes fall into this many buckets (0.01 % each).
BUCKETS = 10_000


@lru_cache(maxsize=65_536)  # asked for every position of every shopper
def control_bucket(uid: str) -> int:
    """The shopper's bucket in ``[0, BUCKETS)``, from a stable hash of the uid."""
    digest = hashlib.sha256(b"storestream-control\x00" + uid.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_control_group(uid: str, pct: float) -> bool:
    """Whether the shopper is held out when ``pct`` percent of shoppers are."""
    if pct <= 0:
        return False
    return control_bucket(uid) < round(pct * BUCKETS / 100)


@dataclass(frozen=True, slots=True)
class Figures:
    """Counts of one promotion (on one partition, or combined)."""

    sent: int = 0
    held_out: int = 0
    sent_redeemed: int = 0
    held_out_redeemed: int = 0
    sent_redemptions: int = 0
    held_out_redemptions: int = 0
    sent_revenue_cents: int = 0
    held_out_revenue_cents: int = 0

    def __add__(self, other: Figures) -> Figures:
        return Figures(*(getattr(self, f.name) + getattr(other, f.name)
                         for f in fields(Figures)))

    def offered(self, held_out: bool) -> Figures:
        """One more offer sent, or held out."""
        # positional (not dataclasses.replace): counted once per offer, on the offer path
        if held_out:
            return Figures(self.sent, self.held_out + 1, *self._redemptions())
        return Figures(self.sent + 1, self.held_out, *self._redemptions())

    def _redemptions(self) -> tuple[int, int, int, int, int, int]:
        return (self.sent_redeemed, self.held_out_redeemed, self.sent_redemptions,
                self.held_out_redemptions, self.sent_revenue_cents, self.held_out_revenue_cents)

    def redeemed(self, held_out: bool, revenue_cents: int, first: bool) -> Figures:
        """One more redemption (``first``: its offer's first) of ``revenue_cents``."""
        if held_out:
            return replace(self, held_out_redemptions=self.held_out_redemptions + 1,
                           held_out_redeemed=self.held_out_redeemed + int(first),
                           held_out_revenue_cents=self.held_out_revenue_cents + revenue_cents)
        return replace(self, sent_redemptions=self.sent_redemptions + 1,
                       sent_redeemed=self.sent_redeemed + int(first),
                       sent_revenue_cents=self.sent_revenue_cents + revenue_cents)

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in FIGURE_NAMES}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Figures:
        if not raw:
            return cls()
        return cls(**{name: int(raw.get(name, 0)) for name in FIGURE_NAMES})


#: The fields of :class:`Figures`, in order (``dataclasses.fields`` builds its tuple anew on
#: every call; figures are decoded and encoded for every offer).
FIGURE_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Figures))


def combine(parts: Iterable[Figures]) -> Figures:
    """The sum of several partitions' figures."""
    total = Figures()
    for part in parts:
        total = total + part
    return total


def conversion(redeemed: int, offers: int) -> float | None:
    """``redeemed / offers``, ``None`` without offers."""
    return None if offers <= 0 else redeemed / offers


def lift(sent_redeemed: int, sent: int, held_redeemed: int, held_out: int,
         ) -> tuple[float, float, float] | None:
    """Relative lift of the sent group's conversion over the held-out group's, with its 95 %
    interval: ``(lift, low, high)``; ``None`` while a group has no offer or no conversion."""
    if min(sent, held_out, sent_redeemed, held_redeemed) <= 0:
        return None
    ratio = (sent_redeemed / sent) / (held_redeemed / held_out)
    se = math.sqrt(max(0.0, 1 / sent_redeemed - 1 / sent + 1 / held_redeemed - 1 / held_out))
    log_ratio = math.log(ratio)
    return (ratio - 1, math.exp(log_ratio - Z95 * se) - 1, math.exp(log_ratio + Z95 * se) - 1)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def summary(pid: str, figures: Figures) -> dict[str, Any]:
    """A promotion's figures as ``/promotions/`` serves them."""
    found = lift(figures.sent_redeemed, figures.sent, figures.held_out_redeemed,
                 figures.held_out)
    return {
        "pid": pid,
        "sent": {"offers": figures.sent, "redeemed": figures.sent_redeemed,
                 "redemptions": figures.sent_redemptions,
                 "conversion": _rounded(conversion(figures.sent_redeemed, figures.sent)),
                 "revenue_cents": figures.sent_revenue_cents},
        "held_out": {"offers": figures.held_out, "redeemed": figures.held_out_redeemed,
                     "redemptions": figures.held_out_redemptions,
                     "conversion": _rounded(conversion(figures.held_out_redeemed,
                                                       figures.held_out)),
                     "revenue_cents": figures.held_out_revenue_cents},
        "lift": None if found is None else _rounded(found[0]),
        "lift_ci95": None if found is None else [_rounded(found[1]), _rounded(found[2])],
    }
