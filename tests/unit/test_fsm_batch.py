"""A batch is applied in one transaction, its keys' rows read in one statement."""

from __future__ import annotations

from pathlib import Path

from concordance.protocol.commands import Batch, Command, Delete, Set
from concordance.protocol.payloads import BatchDone, Deleted
from concordance.storage.fsm import StateMachine


def _entry(index: int, *ops: Set | Delete) -> tuple[int, int, bytes]:
    return index, 1, Command("n1", index, 1_000, Batch(ops)).encode()


def test_a_batch_is_one_transaction_and_one_read_of_its_rows(tmp_path: Path) -> None:
    with StateMachine(tmp_path / "state.db") as sm:
        sm.apply([_entry(1, *(Set(f"tenant:a/k{i}", b"1") for i in range(0, 128, 2)))])
        statements: list[str] = []
        sm._conn.set_trace_callback(statements.append)
        ops = [Set(f"tenant:a/k{i}", b"2") for i in range(128)]  # half exist, half new
        ops.append(Delete("tenant:a/k0"))  # sees the set before it
        [applied] = sm.apply([_entry(2, *ops)])
        sm._conn.set_trace_callback(None)
        assert isinstance(applied.outcome, BatchDone)
        assert [s for s in statements if s.startswith(("BEGIN", "COMMIT"))] == [
            "BEGIN IMMEDIATE",
            "COMMIT",
        ]
        reads = [s for s in statements if s.startswith("SELECT") and "FROM kv" in s]
        assert len(reads) == 1 and " IN (" in reads[0]
        results = applied.outcome.results
        assert [r.version for r in results[:4] if r is not None] == [2, 1, 2, 1]  # went on
        assert results[-1] == Deleted("tenant:a/k0", 2, 2)
        assert sm.get("tenant:a/k0", 2_000) is None
        entry = sm.get("tenant:a/k1", 2_000)
        assert entry is not None and entry.value == b"2"
