from shared.bus.base import Bus, Message, Record, Subscriber

__all__ = ["Bus", "Message", "Record", "Subscriber"]
