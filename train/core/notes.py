"""What a run says once at its start about small data, and the library messages it keeps out of normal output.

A batch larger than the training split is refused (docs/decisions.md: the lr scales with the batch, so a silent
clamp would change the recipe); the images `drop_last` leaves out of every epoch are said once. Library warnings
that say nothing a cdeit user can act on are filtered by their exact logger and message, nothing broader.
"""

from __future__ import annotations

import logging

from cdeit.common.console import console

# (logger, message start): timm warns when a cosine has a single step (a one-epoch, one-step run: nothing to anneal)
QUIET = (("timm.scheduler.cosine_lr", "Cosine annealing scheduler will have no effect"),)


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message starts with `start`."""

    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def quiet_library_messages() -> None:
    """Install the QUIET filters (once per logger and message)."""
    for name, start in QUIET:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.start == start for f in logger.filters):
            logger.addFilter(_DropMessage(start))


def dropped_images(count: int, batch_size: int) -> int:
    """The training images `drop_last` leaves out of each epoch (each epoch leaves out others: the order changes)."""
    return count % batch_size if count >= batch_size else count


def small_data_note(count: int, batch_size: int) -> None:
    """Say once how many of the `count` training images each epoch leaves out (drop_last), if any."""
    dropped = dropped_images(count, batch_size)
    if dropped:
        console.print(
            f"each epoch trains on {count - dropped} of the {count} training images: the last {dropped} do not "
            f"fill a batch of {batch_size} (drop_last; a different {dropped} each epoch)."
        )
