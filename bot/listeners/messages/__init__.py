from __future__ import annotations

from slack_bolt import App

from ..answers import ack_now
from .other_message import other_message
from .shared_file import shared_file
from .thread_reply import thread_reply


# To receive messages from a channel the bot must be a member of it.
def register(app: App) -> None:
    app.event({"type": "message", "subtype": "file_share"})(ack=ack_now, lazy=[shared_file])
    app.event({"type": "message", "subtype": (None, "thread_broadcast")})(ack=ack_now, lazy=[thread_reply])
    app.event("message")(other_message)
