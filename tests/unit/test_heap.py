"""bot.heap: what is frozen, and that garbage is not."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from bot.heap import freeze_long_lived


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def unfrozen_afterwards() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test process's heap is not ours to keep frozen


def test_garbage_cycles_are_collected_before_the_freeze(unfrozen_afterwards: None) -> None:
    kept = Node()
    garbage = Node()
    garbage.other = Node()
    garbage.other.other = garbage  # a cycle only the collector can free
    gone = weakref.ref(garbage)
    del garbage

    frozen = freeze_long_lived()

    assert gone() is None
    assert frozen == gc.get_freeze_count() > 0
    assert gc.is_tracked(kept) and not any(kept is o for o in gc.get_objects())
