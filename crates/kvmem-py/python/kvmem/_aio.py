"""asyncio support: ``await handle`` without blocking the event loop."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._kvmem import Handle, Stats


async def wait(handle: Handle) -> Stats:
    """Waits for ``handle`` on the running loop; a waiter thread wakes the loop once it has finished.

    Cancelling the awaiting task cancels the transfer too; its memory stays alive until its copies stop.
    """
    if not handle.done():
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not finished.done():
                finished.set_result(None)

        handle._on_done(lambda: loop.call_soon_threadsafe(wake))
        try:
            await finished
        except asyncio.CancelledError:
            handle.cancel()
            raise
    return handle.wait()
