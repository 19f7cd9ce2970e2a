"""Moved to plugbay.core.transport.aiohandlers (brokered servers use it too); these names stay here."""

from plugbay.core.transport.aiohandlers import LOOP, HandlerLoop, sync_handler

__all__ = ["LOOP", "HandlerLoop", "sync_handler"]
