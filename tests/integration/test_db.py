"""Node DB on SQLite (WAL) and on the machine's Postgres: schema only via Alembic, models match it,
uint256 exactness, and the repository queries the API and settlement use."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from node.db import (
    Base,
    BatchStatus,
    ReceiptBatch,
    ReceiptRow,
    VoucherRow,
    current_revision,
    head_revision,
    make_engine,
    make_session_factory,
    migrate,
)
from node.db import repository as repo


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """SQLite in tmp_path, or a private schema of the machine's Postgres (conftest `pg_url`)."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'node.db'}"


def test_migrations_create_the_schema_the_models_describe(db_url):
    engine = make_engine(db_url)
    assert inspect(engine).get_table_names() == []
    migrate(db_url)
    migrate(db_url)  # idempotent: the daemon migrates at every start
    assert current_revision(engine) == head_revision()
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables and "alembic_version" in tables
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    engine.dispose()


def test_uint256_is_exact_and_range_checked(db_url):
    migrate(db_url)
    factory = make_session_factory(db_url)
    big = 2**256 - 1
    with factory.begin() as s:
        repo.store_voucher(
            s, lane="l", payer="0xAB", node="0xCD", adapter_id=1, compute_value=big, adapter_value=2**200 + 1, signature="0x01"
        )
    with factory() as s:
        v = repo.latest_voucher(s, "l")
        assert (v.compute_value, v.adapter_value, v.payer) == (big, 2**200 + 1, "0xab")
    with pytest.raises(Exception, match="uint256 out of range"):
        with factory.begin() as s:
            s.add(
                VoucherRow(lane="m", payer="0x1", node="0x2", adapter_id=1, compute_value=2**256, adapter_value=0, signature="0x")
            )
    factory.kw["bind"].dispose()


def test_receipt_and_voucher_repository(db_url):
    migrate(db_url)
    factory = make_session_factory(db_url)
    lane = repo.lane_key("0xAAaa000000000000000000000000000000000001", "0xBB", 7)
    assert lane == "0xaaaa000000000000000000000000000000000001:0xbb:7"
    with factory.begin() as s:
        assert repo.next_receipt_seq(s) == 1
        repo.store_receipt(s, seq=1, request_id="r1", lane=lane, receipt={"seq": 1}, digest="0x" + "11" * 32)
        assert repo.next_receipt_seq(s) == 2
        repo.store_receipt(s, seq=2, request_id="r2", lane=lane, receipt={"seq": 2}, digest="0x" + "22" * 32)
    # a reused seq or request id is refused inside the caller's transaction
    for seq, rid in ((2, "r3"), (3, "r1")):
        with pytest.raises(IntegrityError):
            with factory.begin() as s:
                repo.store_receipt(s, seq=seq, request_id=rid, lane=lane, receipt={}, digest="0x")
    with factory() as s:
        assert repo.pending_receipt_count(s) == 2
        assert repo.oldest_unsettled_receipt_at(s) is not None
        p = repo.receipt_with_proof(s, "r1")
        assert p.receipt == {"seq": 1} and not p.committed and p.proof is None
        assert repo.receipt_with_proof(s, "nope") is None
        assert [r.seq for r in repo.unbatched_receipts(s, 10)] == [1, 2]
    # vouchers: newest per lane, never lower
    with factory.begin() as s:
        repo.store_voucher(
            s, lane=lane, payer="0xAA", node="0xBB", adapter_id=7, compute_value=10, adapter_value=5, signature="0x01"
        )
        repo.store_voucher(
            s, lane=lane, payer="0xAA", node="0xBB", adapter_id=7, compute_value=12, adapter_value=5, signature="0x02"
        )
    with pytest.raises(repo.VoucherRegression):
        with factory.begin() as s:
            repo.store_voucher(
                s, lane=lane, payer="0xAA", node="0xBB", adapter_id=7, compute_value=11, adapter_value=9, signature="0x03"
            )
    with factory() as s:
        v = repo.latest_voucher(s, lane)
        assert (v.compute_value, v.adapter_value, v.signature) == (12, 5, "0x02")
        assert [u.lane for u in repo.unredeemed_vouchers(s, 10)] == [lane]
    # a committed batch hides its receipts from the pending count
    with factory.begin() as s:
        s.add(ReceiptBatch(seq=1, root="0x" + "00" * 32, count=2, cid="bafy", status=BatchStatus.COMMITTED.value))
        s.flush()
        for i, r in enumerate(s.query(ReceiptRow).order_by(ReceiptRow.seq)):
            r.batch_seq, r.leaf_index = 1, i
    with factory() as s:
        assert repo.pending_receipt_count(s) == 0
    factory.kw["bind"].dispose()


def test_downgrade_and_upgrade_again(db_url):
    """Every migration has a working downgrade (operators roll back a bad release)."""
    from alembic import command

    from node.db.migrate import alembic_config

    migrate(db_url)
    command.downgrade(alembic_config(db_url), "base")
    engine = make_engine(db_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate(db_url)
    assert current_revision(engine) == head_revision()
    engine.dispose()
