"""Every topic storestream reads or writes. Values and keys are raw bytes: agents decode them."""

from __future__ import annotations

from faust.types import TopicT

from app.faust_app import app
from app.settings import SETTINGS

_T = SETTINGS.topics


def _topic(name: str) -> TopicT:
    return app.topic(name, key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw")


products_topic = _topic(_T.products)
users_topic = _topic(_T.users)
purchases_topic = _topic(_T.purchases)
returns_topic = _topic(_T.returns)
loyalty_events_topic = _topic(_T.loyalty_events)
dead_letters_topic = _topic(_T.dead_letters)
displays_topic = _topic(_T.displays)
promotions_topic = _topic(_T.promotions)
locations_topic = _topic(_T.locations)
offers_topic = _topic(_T.offers)
redemptions_topic = _topic(_T.redemptions)
held_out_topic = _topic(_T.held_out)
presence_topic = _topic(_T.presence)
associates_topic = _topic(_T.associates)
