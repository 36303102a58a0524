"""processes.few_collections: the collector held back during an import, and put back as it was
for the rest of the process, whatever ran before or at the same time."""

from __future__ import annotations

import gc

from followup.processes import few_collections


def test_an_import_leaves_a_frozen_heap_frozen_and_the_threshold_as_it_was() -> None:
    before = gc.get_threshold()
    gc.freeze()  # as freeze_startup_heap does for a long run
    frozen = gc.get_freeze_count()
    try:
        with few_collections():
            assert gc.get_threshold()[0] >= 50_000
        assert gc.get_freeze_count() == frozen, "the startup heap's freeze is kept"
        assert gc.get_threshold() == before
    finally:
        gc.unfreeze()


def test_overlapping_imports_put_back_what_was_there_before_the_first() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    first, second = few_collections(), few_collections()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first ends while the second still runs
    assert gc.get_threshold()[0] >= 50_000
    second.__exit__(None, None, None)
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, frozen)


def test_an_error_inside_puts_everything_back() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    try:
        with few_collections():
            raise ValueError("a byte not in the encoding")
    except ValueError:
        pass
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, frozen)
