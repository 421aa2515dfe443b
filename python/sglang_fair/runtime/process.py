"""Entry point of SGLang's scheduler process that builds :class:`FairScheduler`.

SGLang starts the scheduler with ``multiprocessing`` spawn and lets the launcher choose the
function (``run_scheduler_process_func``).  Ours takes exactly the arguments of SGLang's
``run_scheduler_process``, swaps the module attribute ``Scheduler`` for ``FairScheduler`` inside the
child and hands over to the stock function, so nothing of SGLang's process set-up is copied here.
A test compares the two signatures so an upstream change
fails loudly.
"""

from __future__ import annotations

from typing import Optional

# Runs when the spawned child unpickles this function, before any SGLang import below.
from sglang_fair import platform as _platform

_platform.setup()


def run_scheduler_process(
    server_args,
    port_args,
    gpu_id: int,
    tp_rank: int,
    pp_rank: int,
    dp_rank: Optional[int],
    pipe_writer,
    display_tp_rank: Optional[int] = None,
    display_dp_rank: Optional[int] = None,
    display_moe_ep_rank: Optional[int] = None,
):
    """Same contract as ``sglang.srt.managers.scheduler.run_scheduler_process``."""
    from sglang.srt.managers import scheduler as stock

    from sglang_fair.runtime.scheduler import FairScheduler

    stock.Scheduler = FairScheduler
    return stock.run_scheduler_process(
        server_args,
        port_args,
        gpu_id,
        tp_rank,
        pp_rank,
        dp_rank,
        pipe_writer,
        display_tp_rank=display_tp_rank,
        display_dp_rank=display_dp_rank,
        display_moe_ep_rank=display_moe_ep_rank,
    )
