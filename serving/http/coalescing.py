"""Responses that are ready in the same turn of the event loop leave together, in the next turn.

Under load, one turn of the loop reads the requests of many connections and answers them one
after the other. Sent at once, each response wakes the client on its own: on a small machine
that wake-up (a loopback send that finds the client asleep) costs the server ~20 µs of CPU, as
much as a small model's run, and the next requests then trickle in one at a time. Held until
every response of the turn is ready, they leave in one burst, the clients answer in one burst,
and the next turn reads them all at once (side_effects at 16 and 64 clients without batching:
1.4-1.6x the requests/s, p50 and p99 lower; see bench/RESULTS.md).

Holding costs a turn of the loop, so a response is held only while holding pays, with the same
rule as the adaptive batcher's wait (`serving.core.batching`): while fewer than one group in ten of
late held two or more responses (one client, or clients that never overlap), a response leaves
at once, and every 16th is still held so that clients that start to overlap are noticed. A new
server holds its first ~10 responses, until it has learnt that.

A held response leaves in the next turn, after what that turn runs ahead of it: the others
of its group, and with adaptive batching possibly the next batch's run on the loop (up to
`inline_max_us`). Batched responses are held too: they wake in one turn already, yet letting
them go without the hold lost (interleaved A/B, 20 rounds: 0.93-1.02x the requests/s on five
batched loads, p99 higher on four; bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio

from serving.core.batching import NO_WAIT, MergePolicy


class Coalescer:
    """Groups the responses of one turn of the event loop. Used from the event loop only."""

    def __init__(self) -> None:
        self._policy = MergePolicy()
        """The batcher's rule: hold while groups of late held two or more responses (a new
        server holds from its first requests)."""
        self._group = 0
        """Responses held since the last group went on (0: none). Close to a turn's group but
        not exact (the first of a group to go on closes it, whatever else the next turn runs
        around it); the rule only needs to know whether responses come together at all."""

    @property
    def holding(self) -> bool:
        """Whether responses are held now (a group of late held more than one)."""
        return self._policy.paying

    async def hold(self) -> None:
        """Return in the next turn of the loop, with the other responses of this one, while
        that pays; at once, without a turn, otherwise."""
        if not self._group and self._policy.wait() == NO_WAIT:
            return
        self._group += 1
        try:
            await asyncio.sleep(0)
        finally:
            if self._group:  # the first of the group to go on: the group is complete
                self._policy.observe(self._group)
                self._group = 0
