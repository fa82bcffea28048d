"""Applies feed batches forever, printing "APPLIED <seq>" only after the store returned.

Run by test_apply_crash.py, which SIGKILLs it at random moments: the store must then hold exactly the
faces of some sequence at or after the last one printed, and say so.
"""

from __future__ import annotations

import sys
from pathlib import Path

from feed_batches import COLLECTION, update

from edge.store import Store


def main(state_dir: Path) -> None:
    store = Store(state_dir, exact_max=500, checkpoint_interval_s=0.05)
    state = store.sync_states().get(COLLECTION)
    seq = state.applied_seq if state is not None else -1
    print("READY", flush=True)
    while True:
        seq += 1
        store.apply_feed(update(seq))
        print("APPLIED", seq, flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
