"""Hypothesis stateful test over the real contracts on anvil: random sequences of deposits,
redemptions (including replays, lowered and underfunded vouchers, and vouchers of a delegated
signer), contributions, payments, harvests, thaws and withdrawals, signer revocations, equivocation
slashes, disputes (upheld, rejected or expired) and claims. After every step:

- tokens are conserved: payers + node + owner + contributors + escrow + vault + ... == minted;
- the escrow holds exactly the sum of its accounts, and each account matches a Python model;
- NodeRegistry holds exactly the bond, the open dispute deposits and what was burned;
- the vault holds at least what it owes (claimable + unharvested dataset rewards), short of it
  only by accumulator rounding dust that is bounded;
- nobody can claim more than was credited to them: claimed + claimable == credited (from events);
- batches that carry attribution (AttributionPool.settle with random weights, naming accepted,
  later-rejected and other-dataset contributions) pay out exactly the pool they drain, to the wei,
  and the node's pool counts in what the vault owes; undrained pools can be flushed (at once
  while the node is condemned, which may not settle).

Bounded (few examples, short runs) so it stays well under 90 s on two cores."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from chain.attribution_entries import pack
from chain.contract_types import AttributionRefused, Claimed, Credited, DatasetRewarded, NodeCondemned, VoucherRedeemed
from chain.eip712 import Receipt, Voucher, sign_receipt, sign_voucher
from chain.errors import ContractRevert

FEE_BPS = 500
CTX: dict = {}


class Protocol(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.env = env = CTX["env"]
        self.anvil = CTX["anvil"]
        self.snap = self.anvil.rpc("evm_snapshot")
        c = env.c
        self.payers = [env.payer, env.payer2]
        self.holders = [
            env.deployer,
            env.payer,
            env.payer2,
            env.node,
            env.owner,
            env.curator,
            env.contributor,
            env.contributor2,
            env.signer,
            env.stranger,
        ]
        self.escrow_model = {p.address: 0 for p in self.payers}
        self.lanes: dict[tuple[str, int], tuple[int, int]] = defaultdict(lambda: (0, 0))
        self.credited: dict[str, int] = defaultdict(int)
        self.claimed: dict[str, int] = defaultdict(int)
        self.dataset_payments = 0
        self.accepted: list[int] = []
        c.datasets.create_dataset(env.curator, "d", "MIT", "")
        c.datasets.create_dataset(env.curator, "other", "MIT", "")
        c.datasets.contribute(env.contributor2, 2, "bafy-other", 5)  # contribution 1: dataset 2, never paid by dataset 1
        c.datasets.accept(env.curator, 1, 5)
        self.contributions: list[int] = [1]  # every id a batch may name
        # adapter 1 has no datasets; adapter 2 pays 30 % of the rest to dataset 1
        c.adapters.register(env.owner, "m", "bafy1", 8, 1, 10_000)
        c.adapters.register(env.owner, "m", "bafy2", 8, 1, 7000, [1], [3000])
        self.min_bond = c.nodes.dispute_terms().min_bond
        c.nodes.register(env.node, "https://n", ["m"], 1, self.min_bond)
        self.bond = self.min_bond
        self.deposits_held = 0  # open dispute deposits held by NodeRegistry
        self.condemned = False  # an equivocation proven while disputes were open (or in the window) waits
        self.until = 0  # the condemnation's end of disputes
        self.window = c.nodes.dispute_terms().dispute_window
        self.open_disputes: list[int] = []
        self.receipt_seq = 0
        c.escrow.authorize_signer_key(env.payer, env.signer)  # payer 0 may also pay with the signer key

    def teardown(self):
        if hasattr(self, "snap"):
            self.anvil.rpc("evm_revert", [self.snap])

    def _track(self, receipt):
        for e in self.env.c.events_of(receipt):
            if isinstance(e, Credited):
                self.credited[e.account] += e.amount
            elif isinstance(e, Claimed):
                self.claimed[e.account] += e.amount

    @rule(i=st.integers(0, 1), amount=st.integers(1, 10**6))
    def deposit(self, i, amount):
        p = self.payers[i]
        self._track(self.env.c.escrow.deposit(p, self.env.node.address, amount))
        self.escrow_model[p.address] += amount

    @rule(
        i=st.integers(0, 1),
        adapter=st.integers(0, 2),
        dc=st.integers(0, 5000),
        da=st.integers(0, 5000),
        lower=st.booleans(),
        swap=st.booleans(),
        by_signer=st.booleans(),
    )
    def redeem(self, i, adapter, dc, da, lower, swap, by_signer):
        self._redeem(i, adapter, dc, da, lower, swap, by_signer)

    def _redeem(self, i, adapter, dc, da, lower, swap, by_signer, settle=None):
        """The redeem rule; with `settle` = (seq, entries), through UsageEscrow.redeemAndSettle (its receipt is returned)."""
        env, p = self.env, self.payers[i]
        if adapter == 0:
            da = 0
        old_c, old_a = self.lanes[(p.address, adapter)]
        if lower:  # attack: a replayed or lowered voucher must pay nothing
            new_c, new_a = max(0, old_c - dc), max(0, old_a - da)
        elif swap and adapter:  # attack: one component up, the other down, must pay nothing
            new_c, new_a = old_c + dc, max(0, old_a - da)
        else:
            new_c, new_a = old_c + dc, old_a + da
        v = Voucher(p.address, env.node.address, adapter, new_c, new_a)
        key = env.signer.key if by_signer else p.key
        authorized = env.c.escrow.is_authorized(p.address, env.signer.address) if by_signer else True
        sig = sign_voucher(v, key, env.chain_id, env.c.escrow.address)
        if self.condemned:  # a condemned node redeems nothing
            with pytest.raises(ContractRevert, match="UsageEscrowNodeNotStaked"):
                env.c.escrow.redeem(env.node, [v], [sig])
            return
        if settle is None:
            r = env.c.escrow.redeem(env.node, [v], [sig])
        else:
            r = env.c.escrow.redeem_and_settle(env.node, [v], [sig], settle[0], pack(settle[1]))
        self._track(r)
        if not authorized or new_c < old_c or new_a < old_a:
            return r
        inc_c, inc_a = new_c - old_c, new_a - old_a
        bal = self.escrow_model[p.address]
        if inc_c + inc_a > bal:  # min(increase, available), pro rata
            inc_a = inc_a * bal // (inc_c + inc_a)
            inc_c = bal - inc_a
        self.escrow_model[p.address] -= inc_c + inc_a
        self.lanes[(p.address, adapter)] = (old_c + inc_c, old_a + inc_a)
        if adapter == 2 and inc_a:
            self.dataset_payments += 1
        return r

    @rule()
    def revoke_signer(self):
        env = self.env
        if env.c.escrow.signer_of(env.signer.address).revoke_at == 0:
            env.c.escrow.revoke_signer(env.payer, env.signer.address)

    def _receipt(self, seq: int, salt: int) -> tuple[Receipt, bytes]:
        env = self.env
        r = Receipt(
            request_id=salt.to_bytes(32, "big"),
            payer=env.payer.address,
            node=env.node.address,
            adapter_id=0,
            seq=seq,
            prompt_tokens=1,
            completion_tokens=1,
            compute_cost=1,
            adapter_cost=0,
            output_hash=bytes(32),
            attribution_hash=bytes(32),
            timestamp=1,
        )
        return r, sign_receipt(r, env.node.key, env.chain_id, env.c.receipts.address)

    def _rebond(self):
        """A slashed node stakes again so redemptions keep running (not while condemned: refused)."""
        if self.bond < self.min_bond and not self.condemned:
            self.env.c.nodes.add_bond(self.env.node, self.min_bond - self.bond)
            self.bond = self.min_bond

    @rule()
    def slash_equivocation(self):
        env = self.env
        self.receipt_seq += 1
        a, sa = self._receipt(self.receipt_seq, 1)
        b, sb = self._receipt(self.receipt_seq, 2)
        if self.condemned:
            with pytest.raises(ContractRevert, match="NodeRegistryCondemned"):
                env.c.nodes.slash_equivocation(env.stranger, a, sa, b, sb)
            return
        r = env.c.nodes.slash_equivocation(env.stranger, a, sa, b, sb)
        until = env.c.receipts.last_commit_at(env.node.address) + self.window
        [ev] = [e for e in env.c.events_of(r) if isinstance(e, NodeCondemned)] or [None]
        # condemned (the disputes, open or to come within the window, are paid first) or slashed now
        assert (ev is not None) == (bool(self.open_disputes) or self._now(r) <= until)
        if ev is not None:
            self.condemned, self.until = True, ev.until
            return
        self.bond = 0
        self._rebond()

    def _now(self, receipt) -> int:
        return self.env.c.w3.eth.get_block(receipt["blockNumber"])["timestamp"]

    def _dispute_closed(self, receipt):
        """A dispute closed: once none is open and the window is over, a condemned bond is slashed whole."""
        if self.condemned and not self.open_disputes and self._now(receipt) > self.until:
            self.condemned = False
            self.bond = 0
        assert self.env.c.nodes.get_node(self.env.node.address).condemned == self.condemned
        self._rebond()

    @rule()
    def execute_condemnation(self):
        """After the window, with no dispute open, anyone slashes the condemned bond; before, nothing."""
        env = self.env
        if not self.condemned:
            return
        if self.open_disputes:
            with pytest.raises(ContractRevert, match="NodeRegistryCondemnationPending"):
                env.c.nodes.execute_condemnation(env.stranger, env.node.address)
            return
        env.mine_time(self.window + 1, self.anvil.rpc)
        env.c.nodes.execute_condemnation(env.stranger, env.node.address)
        self.condemned = False
        self.bond = 0
        self._rebond()

    @rule()
    def open_dispute(self):
        env = self.env
        self.receipt_seq += 1
        r, sig = self._receipt(self.receipt_seq, 3)
        latest = env.c.w3.eth.get_block("latest")["timestamp"]
        if self.condemned and latest >= self.until:  # the window is over (the next block is later)
            with pytest.raises(ContractRevert, match="NodeRegistryCondemned"):
                env.c.nodes.open_dispute(env.stranger, r, sig)
            return
        env.c.nodes.open_dispute(env.stranger, r, sig)
        self.open_disputes.append(env.c.nodes.dispute_count())
        self.deposits_held += env.c.nodes.dispute_terms().dispute_deposit

    @rule(slash=st.integers(0, 2 * 10**18), expire=st.booleans())
    def close_dispute(self, slash, expire):
        if not self.open_disputes:
            return
        env = self.env
        d = self.open_disputes.pop(0)
        self.deposits_held -= env.c.nodes.get_dispute(d).deposit
        if expire:
            env.mine_time(env.c.nodes.dispute_terms().dispute_window + 1, self.anvil.rpc)
            last = env.c.nodes.expire_dispute(env.stranger, d)
            self.open_disputes.clear()  # every dispute opened before is past its deadline now
            for other in range(1, env.c.nodes.dispute_count() + 1):
                info = env.c.nodes.get_dispute(other)
                if info.open:
                    last = env.c.nodes.expire_dispute(env.stranger, other)
                    self.deposits_held -= info.deposit
        else:
            last = env.c.nodes.resolve_dispute(env.deployer, d, slash)  # the deployer is the arbitrator
            self.bond -= min(slash, self.bond)
        self._dispute_closed(last)

    @rule(who=st.integers(0, 1), weight=st.integers(1, 1000))
    def contribute_and_accept(self, who, weight):
        env = self.env
        contributor = (env.contributor, env.contributor2)[who]
        env.c.datasets.contribute(contributor, 1, "bafyc", weight)
        cid = env.c.datasets.contribution_count()
        env.c.datasets.accept(env.curator, cid, weight)
        self.accepted.append(cid)
        self.contributions.append(cid)

    @rule(k=st.integers(0, 50))
    def reject_later(self, k):
        """The curator rejects an accepted contribution: it is paid what it earned, then nothing more."""
        if self.accepted:
            cid = self.accepted.pop(k % len(self.accepted))
            self._track(self.env.c.datasets.reject(self.env.curator, cid))
            self.dataset_payments += 1

    @rule(
        picks=st.lists(st.tuples(st.integers(0, 50), st.integers(1, 2**128 - 1)), max_size=4),
        unattributed=st.integers(0, 10**30),
        da=st.integers(0, 5000),
        fused=st.booleans(),
    )
    def settle_attributed_batch(self, picks, unattributed, da, fused):
        """A payment for dataset 1 (when da > 0), then the node commits a batch and settles it with
        attribution weights (any contribution it names, accepted or not); `fused`: the payment and
        the settle in one transaction (UsageEscrow.redeemAndSettle)."""
        env, c = self.env, self.env.c
        fused = fused and da > 0 and not self.condemned
        if da:
            self.deposit(0, da)
            if not fused:
                self.redeem(0, 2, 0, da, False, False, False)
        weights = {self.contributions[i % len(self.contributions)]: w for i, w in picks}
        entries = ([(1, 0, unattributed)] if unattributed else []) + [(1, cid, w) for cid, w in sorted(weights.items())]
        seq = c.pool.settled_seq(env.node.address) + 1  # a batch committed while condemned is still unsettled
        if c.receipts.last_seq(env.node.address) < seq:
            c.receipts.commit_batch(env.node, seq, seq.to_bytes(32, "big"), 1, "bafy-receipts")
        pool = c.pool.pool_of(env.node.address, 1).balance
        before = {cid: c.datasets.pending_attributed(cid) for cid in self.contributions}
        assert c.nodes.can_redeem(env.node.address) == (not self.condemned)
        if self.condemned:  # nothing left to lose: it may not direct the pool (anyone flushes it)
            with pytest.raises(ContractRevert, match="AttributionPoolNodeNotAccountable"):
                c.pool.settle(env.node, seq, entries)
            return
        if fused:
            r = self._redeem(0, 2, 0, da, False, False, False, settle=(seq, entries))
            paid = sum(e.adapter_paid for e in c.events_of(r) if isinstance(e, VoucherRedeemed))
            part = (paid - paid * c.escrow.protocol_fee().bps // 10_000) * 3000 // 10_000  # dataset 1's 30 %
            if entries:
                pool += part  # drained with the pool in the same transaction
            else:
                assert c.pool.pool_of(env.node.address, 1).balance == pool + part  # not named: it fills
        else:
            r = c.pool.settle(env.node, seq, entries)
            self._track(r)
        events = c.events_of(r)
        attributed = {cid: c.datasets.pending_attributed(cid) - before[cid] for cid in self.contributions}
        paid = sum(attributed.values()) + sum(e.amount for e in events if isinstance(e, DatasetRewarded))
        assert paid == (pool if entries else 0)  # exactly the drained pool, to the wei
        for cid, amount in attributed.items():
            if amount:
                assert cid in self.accepted  # only accepted contributions of dataset 1
        for e in events:
            if isinstance(e, AttributionRefused):
                assert e.contribution_id not in self.accepted
        if entries:
            assert c.pool.pool_of(env.node.address, 1).balance == 0
            self.dataset_payments += 1

    @rule()
    def flush_after_delay(self):
        """Anyone flushes an undrained pool after the delay, or at once while the node is condemned."""
        env, c = self.env, self.env.c
        if c.pool.pool_of(env.node.address, 1).balance:
            if not self.condemned:
                env.mine_time(c.pool.flush_delay(), self.anvil.rpc)
            self._track(c.pool.flush(env.stranger, env.node.address, 1))
            self.dataset_payments += 1

    @rule()
    def harvest(self):
        if self.accepted:
            self._track(self.env.c.datasets.harvest(self.env.stranger, self.accepted))

    @rule(k=st.integers(0, 9))
    def claim(self, k):
        acct = self.holders[k]
        if self.env.c.vault.claimable(acct.address):
            self._track(self.env.c.vault.claim(acct))

    @rule(i=st.integers(0, 1), frac=st.integers(1, 100))
    def thaw_and_withdraw(self, i, frac):
        env, p = self.env, self.payers[i]
        bal = self.escrow_model[p.address]
        amount = bal * frac // 100
        if amount == 0:
            return
        env.c.escrow.start_thaw(p, env.node.address, amount)
        env.mine_time(env.c.escrow.thaw_seconds(), self.anvil.rpc)
        env.c.escrow.withdraw(p, env.node.address)
        self.escrow_model[p.address] -= amount

    @invariant()
    def tokens_conserved_and_nothing_over_claimed(self):
        if not hasattr(self, "snap"):
            return
        c = self.env.c
        held = sum(c.token.balance_of(a.address) for a in self.holders)
        escrow_bal = c.token.balance_of(c.escrow.address)
        vault_bal = c.token.balance_of(c.vault.address)
        nodes_bal = c.token.balance_of(c.nodes.address)
        assert held + escrow_bal + vault_bal + nodes_bal == c.token.total_supply()
        assert escrow_bal == sum(self.escrow_model.values())
        for p in self.payers:
            assert c.escrow.account_of(p.address, self.env.node.address).balance == self.escrow_model[p.address]
        assert c.nodes.get_node(self.env.node.address).bond == self.bond
        assert nodes_bal == self.bond + self.deposits_held + c.nodes.burned()
        assert c.nodes.open_disputes(self.env.node.address) == len(self.open_disputes)
        pooled = c.pool.pool_of(self.env.node.address, 1).balance  # redeemed, waiting for a batch
        owed = c.vault.total_claimable() + sum(c.datasets.pending_reward(i) for i in self.contributions) + pooled
        assert owed <= vault_bal
        # accumulator flooring: < 1 unit per contribution per payment, plus payments while weightless
        assert vault_bal - owed <= (len(self.accepted) + 1) * (self.dataset_payments + 1)
        for who in set(self.credited) | set(self.claimed):
            assert self.claimed[who] + c.vault.claimable(who) == self.credited[who]


def test_protocol_state_machine(deployed, anvil):
    CTX["env"], CTX["anvil"] = deployed, anvil
    run_state_machine_as_test(
        Protocol,
        settings=settings(
            max_examples=10,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        ),
    )
