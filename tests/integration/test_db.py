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


def test_store_vouchers_writes_a_group_with_one_select_and_refuses_a_regression(db_url):
    """The gate's group write (`repo.store_vouchers`): new lanes inserted, known lanes updated
    (what was redeemed kept, the last redeem error cleared), a voucher below its lane's row raises
    `VoucherRegression` and the caller's transaction writes nothing."""
    migrate(db_url)
    factory = make_session_factory(db_url)

    def voucher(adapter: int, c: int, a: int, sig: str) -> dict:
        lane = repo.lane_key("0xAA", "0xBB", adapter)
        return dict(lane=lane, payer="0xAA", node="0xBB", adapter_id=adapter, compute_value=c, adapter_value=a, signature=sig)

    with factory.begin() as s:
        repo.store_voucher(s, **voucher(1, 10, 5, "0x01"))
        row = s.get(VoucherRow, repo.lane_key("0xAA", "0xBB", 1))
        row.redeemed_compute, row.redeemed_adapter, row.redeem_error = 4, 2, "reverted"
    with factory.begin() as s:
        repo.store_vouchers(s, [voucher(1, 12, 5, "0x02"), voucher(2, 2**200, 0, "0x03")])
    with factory() as s:
        one, two = (repo.latest_voucher(s, repo.lane_key("0xAA", "0xBB", a)) for a in (1, 2))
        assert (one.compute_value, one.adapter_value, one.signature) == (12, 5, "0x02")
        assert (one.redeemed_compute, one.redeemed_adapter, one.redeem_error) == (4, 2, None)
        assert (two.payer, two.node, two.adapter_id, two.compute_value, two.signature) == ("0xaa", "0xbb", 2, 2**200, "0x03")
        assert (two.redeemed_compute, two.redeemed_adapter) == (0, 0)
    with pytest.raises(repo.VoucherRegression):
        with factory.begin() as s:
            repo.store_vouchers(s, [voucher(3, 1, 1, "0x04"), voucher(1, 11, 9, "0x05")])
    with pytest.raises(ValueError, match="one voucher per lane"):
        with factory.begin() as s:
            repo.store_vouchers(s, [voucher(3, 1, 1, "0x04"), voucher(3, 2, 2, "0x05")])
    with factory() as s:
        assert repo.latest_voucher(s, repo.lane_key("0xAA", "0xBB", 3)) is None
        assert repo.latest_voucher(s, repo.lane_key("0xAA", "0xBB", 1)).signature == "0x02"
    factory.kw["bind"].dispose()
