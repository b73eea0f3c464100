"""A child process running the example order saga for the harness's real-crash runs.

``python -m tests.saga.order_child PHASE DIR`` (with the plan in ``SHIPYARD_SAGA_PLAN``)
runs the saga against ``DIR/shop.db`` (participants) and ``DIR/saga.db`` (saga log);
phase ``run`` SIGKILLs itself right after the plan's commit, phase ``recover`` resumes.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from shipyard.saga.testing import child_main
from shipyard.storage import open_database
from tests.saga.order import OrderData, order_saga


async def main(phase: str, directory: Path) -> None:
    shop = await open_database(f"sqlite:///{directory / 'shop.db'}")
    log = await open_database(f"sqlite:///{directory / 'saga.db'}")
    await child_main(order_saga(shop), log, lambda saga_id: OrderData(order_id=saga_id), phase)
    await log.close()
    await shop.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
