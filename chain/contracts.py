"""Access to the deployed protocol contracts, driven by their ABIs (Hardhat artifacts).

`ContractBinding` exposes every function of a contract's ABI under its snake_case name, with
nothing written per function:
- a view function is a call: `c.escrow.account_of(payer, node)`;
- a state-changing function is a transaction signed by its first argument, a LocalAccount, sent
  by `chain.send.send_tx`; it returns the receipt: `c.escrow.deposit(account, node, amount)`;
- `build_<name>(sender, ...)` returns the unsigned transaction for the outbox (which adds the
  nonce, gas and fees): `c.escrow.build_redeem(node_address, vouchers, signatures)`.
`call`, `send` and `build` take the ABI name instead (`c.pool.send(account, "fill", ...)`).

Arguments are checked against the ABI: their count, and each value encodable as its type. They
may be passed by snake_case name, and the few in `OPTIONAL_ARGS` may be left out. A struct
argument may be a dataclass whose fields are its components in snake_case (`Voucher`,
`Receipt`). Results come back as plain Python (checksum addresses, bytes, tuples); the reads
listed in `STRUCT_READS` decode by ABI component names into the dataclasses of
`chain.contract_types` (a test checks each against the ABI). Reverts surface as
`chain.errors.ContractRevert(name, args)`. Events decode into the event dataclasses through
`Contracts.decode_events(logs)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import lru_cache, partial
from typing import Any, Callable, Iterable, Mapping, Sequence, cast

from eth_account.signers.local import LocalAccount
from eth_utils import function_abi_to_4byte_selector, to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.types import TxReceipt

from chain.abi import AbiParam, canonical_type, from_abi, to_abi
from chain import attribution_entries
from chain.artifacts import load_artifact
from chain.attribution_entries import AttributionEntry
from chain.contract_types import (
    CONTRIBUTION_STATUS,
    AdapterInfo,
    AdapterPayout,
    ContributionInfo,
    DatasetInfo,
    DisputeInfo,
    DisputeTerms,
    EscrowAccount,
    Event,
    LaneCollected,
    NodeInfo,
    PoolBalance,
    ProtocolFee,
    SignerInfo,
    snake,
)
from chain.deploy import Deployment
from chain.eip712 import address_of, sign_signer_proof
from chain.errors import ChainError
from chain.events import EventDecodeError, EventDecoder
from chain.reverts import as_revert, decode_revert, revert_data
from chain.send import send_tx

SIGNER_PROOF_TTL_S = 3600
CALL_BATCH = 100
"""Calls per JSON-RPC batch of `call_many` (public RPCs cap batches, commonly at 100 or more)."""

Sender = str | LocalAccount


@dataclass(frozen=True)
class StructRead:
    """A read whose outputs decode into `cls`: each field is an output component in snake_case,
    except leading fields named after the function's inputs (the id that was asked for);
    `enums` maps a field to the names of its Solidity enum's values."""

    cls: type
    enums: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


STRUCT_READS: dict[tuple[str, str], StructRead] = {
    ("DatasetRegistry", "getDataset"): StructRead(DatasetInfo),
    ("DatasetRegistry", "getContribution"): StructRead(ContributionInfo, {"status": CONTRIBUTION_STATUS}),
    ("AdapterRegistry", "getAdapter"): StructRead(AdapterInfo),
    ("AdapterRegistry", "payoutOf"): StructRead(AdapterPayout),
    ("NodeRegistry", "getNode"): StructRead(NodeInfo),
    ("NodeRegistry", "getDispute"): StructRead(DisputeInfo),
    ("NodeRegistry", "disputeTerms"): StructRead(DisputeTerms),
    ("UsageEscrow", "accountOf"): StructRead(EscrowAccount),
    ("UsageEscrow", "collected"): StructRead(LaneCollected),
    ("UsageEscrow", "signerOf"): StructRead(SignerInfo),
    ("UsageEscrow", "protocolFee"): StructRead(ProtocolFee),
    ("AttributionPool", "poolOf"): StructRead(PoolBalance),
}

# Trailing arguments callers may leave out (ABI functions have no defaults): the value each takes.
OPTIONAL_ARGS: dict[tuple[str, str], dict[str, Any]] = {
    ("DatasetRegistry", "createDataset"): {"metadataCid": ""},
    ("AdapterRegistry", "register"): {"datasetIds": (), "datasetBps": ()},
    ("NodeRegistry", "register"): {"bond": 0},
}


def function_attr(abi_name: str) -> str:
    """ABI function name -> binding attribute (getAdapter -> get_adapter, MAX_RANK -> max_rank)."""
    return abi_name.lower() if abi_name.upper() == abi_name else snake(abi_name)


def output_params(entry: Mapping[str, Any]) -> list[AbiParam]:
    """A function's outputs, one struct output unfolded into its components."""
    outs = list(entry["outputs"])
    if len(outs) == 1 and outs[0]["type"] == "tuple":
        return list(outs[0]["components"])
    return outs


@dataclass(frozen=True)
class _Abi:
    """One artifact's ABI, indexed for the binding."""

    functions: dict[str, dict]  # ABI name -> entry
    attrs: dict[str, str]  # snake_case attribute -> ABI name


@lru_cache(maxsize=None)
def _indexed_abi(artifact: str) -> _Abi:
    functions: dict[str, dict] = {}
    for entry in load_artifact(artifact).abi:
        if entry["type"] == "function":
            if entry["name"] in functions:  # by-name access cannot tell overloads apart
                raise ChainError(f"{artifact}.{entry['name']} is overloaded")
            functions[entry["name"]] = entry
    return _Abi(functions, {function_attr(n): n for n in functions})


def _is_view(entry: Mapping[str, Any]) -> bool:
    return entry["stateMutability"] in ("view", "pure")


class ContractBinding:
    """One deployed contract, reached through its artifact's ABI (see the module docstring)."""

    def __init__(self, w3: Web3, address: str, artifact: str):
        self.w3 = w3
        self.address = to_checksum_address(address)
        self.artifact = artifact
        self._abi = _indexed_abi(artifact)
        self.contract = w3.eth.contract(address=self.address, abi=load_artifact(artifact).abi_list)
        self._events = EventDecoder({self.address: load_artifact(artifact).abi_list})  # the one decoder
        self._chain_id: int | None = None

    def __repr__(self) -> str:
        return f"<{self.artifact} at {self.address}>"

    def __getattr__(self, attr: str) -> Callable[..., Any]:
        abi = self.__dict__.get("_abi")  # absent while unpickling or before __init__ ran
        if abi is None:
            raise AttributeError(attr)
        build = attr.startswith("build_")
        fn = abi.attrs.get(attr[len("build_") :] if build else attr)
        if fn is None:
            raise AttributeError(f"{self.artifact} has no function for {attr!r}")
        if _is_view(abi.functions[fn]):
            if build:
                raise AttributeError(f"{self.artifact}.{fn} is a view function: there is no transaction to build")
            return partial(self.call, fn)
        if build:
            return lambda sender, *args, **kwargs: self.build(sender, fn, *args, **kwargs)
        return lambda account, *args, **kwargs: self.send(account, fn, *args, **kwargs)

    # -- functions by ABI name
    def _entry(self, fn: str) -> dict:
        entry = self._abi.functions.get(fn)
        if entry is None:
            raise ChainError(f"{self.artifact} has no function {fn!r}")
        return entry

    def _args(self, entry: Mapping[str, Any], args: tuple, kwargs: Mapping[str, Any]) -> list[Any]:
        """`args` (then `kwargs` by snake_case input name, then OPTIONAL_ARGS) checked against the
        function's inputs and converted for web3."""
        inputs = entry["inputs"]
        where = f"{self.artifact}.{entry['name']}"
        optional = OPTIONAL_ARGS.get((self.artifact, entry["name"]), {})
        by_name = {snake(i["name"]): i["name"] for i in inputs}
        unknown = set(kwargs) - set(by_name)
        given = {by_name[k]: v for k, v in kwargs.items() if k in by_name}
        values = list(args)
        for param in inputs[len(args) :]:
            name = param["name"]
            if name in given:
                values.append(given.pop(name))
            elif name in optional:
                values.append(optional[name])
            else:
                break
        if len(values) != len(inputs) or unknown or given:
            sig = ", ".join(f"{canonical_type(i)} {snake(i['name'])}" for i in inputs)
            extra = f" (unknown or repeated: {sorted(unknown | {snake(n) for n in given})})" if unknown or given else ""
            raise ChainError(f"{where}({sig}) takes {len(inputs)} arguments, got {len(args) + len(kwargs)}{extra}")
        out = []
        for i, (value, param) in enumerate(zip(values, inputs, strict=True)):
            name = f"{where} argument {snake(param['name']) or i}"
            value = to_abi(value, param, name)
            if not self.w3.codec.is_encodable(canonical_type(param), value):
                raise ChainError(f"{name}: not a {canonical_type(param)}: {value!r}")
            out.append(value)
        return out

    def call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        """Call the view function `fn`; a struct read comes back as its dataclass (STRUCT_READS)."""
        entry = self._entry(fn)
        values = self._args(entry, args, kwargs)
        try:
            result = getattr(self.contract.functions, fn)(*values).call()
        except (ContractLogicError, Web3RPCError) as e:
            raise as_revert(e) from e
        return self._decoded(fn, entry, values, result)

    def call_many(self, fn: str, calls: Sequence[Sequence[Any]]) -> list[Any]:
        """`call(fn, *args)` for each `args` of `calls`, as JSON-RPC batches of at most CALL_BATCH
        raw eth_calls: one round trip each instead of one per call, and the calldata encoded once
        per call by the ABI codec (web3's contract-function path costs ~3 ms of CPU per call to
        encode, measured; the payment gate reads every lane of a payer at once). Any failure fails
        the whole read."""
        send_batch = getattr(self.w3.provider, "make_batch_request", None)
        if send_batch is None:  # a provider without JSON-RPC batches: one call each
            return [self.call(fn, *args) for args in calls]
        entry = self._entry(fn)
        selector = function_abi_to_4byte_selector(cast(Any, entry))
        in_types = [canonical_type(p) for p in entry["inputs"]]
        out_types = [canonical_type(p) for p in entry["outputs"]]
        codec = self.w3.codec
        values = [self._args(entry, tuple(args), {}) for args in calls]
        out: list[Any] = []
        for at in range(0, len(values), CALL_BATCH):
            chunk = values[at : at + CALL_BATCH]
            requests = [
                ("eth_call", [{"to": self.address, "data": "0x" + (selector + codec.encode(in_types, v)).hex()}, "latest"])
                for v in chunk
            ]
            responses = sorted(send_batch(requests), key=lambda r: r.get("id", 0))
            if len(responses) != len(chunk):
                raise ChainError(f"{self.artifact}.{fn}: the RPC answered {len(responses)} of {len(chunk)} batched calls")
            for v, r in zip(chunk, responses, strict=True):
                if "error" in r:
                    err = r["error"]
                    data = revert_data(err.get("data")) if isinstance(err, Mapping) else None
                    if data is not None:  # as `call` decodes it (chain.reverts.as_revert)
                        raise decode_revert(data)
                    raise ChainError(f"{self.artifact}.{fn}: {err}")
                decoded = codec.decode(out_types, HexBytes(r["result"]))
                out.append(self._decoded(fn, entry, v, decoded[0] if len(decoded) == 1 else list(decoded)))
        return out

    def _decoded(self, fn: str, entry: Mapping[str, Any], values: list, result: Any) -> Any:
        """What `call` returns for `result`, web3's output of `fn(*values)`."""
        outs = output_params(entry)
        one_value = len(entry["outputs"]) == 1 and entry["outputs"][0]["type"] != "tuple"
        results = [result] if one_value else result  # web3 gives a struct or several outputs as a sequence
        decoded = [from_abi(v, p) for v, p in zip(results, outs, strict=True)]
        read = STRUCT_READS.get((self.artifact, fn))
        if read is not None:
            return self._struct(read, entry, values, outs, decoded)
        return decoded[0] if len(decoded) == 1 else tuple(decoded)

    @staticmethod
    def _struct(read: StructRead, entry: Mapping[str, Any], args: list, outs: list, decoded: list) -> Any:
        by_name = {snake(i["name"]): from_abi(a, i) for a, i in zip(args, entry["inputs"], strict=True)}
        by_name.update({snake(p["name"]): v for p, v in zip(outs, decoded, strict=True)})
        for f, names in read.enums.items():
            by_name[f] = names[by_name[f]]
        return read.cls(**{f.name: by_name[f.name] for f in fields(read.cls)})

    def build(self, sender: Sender, fn: str, *args: Any, **kwargs: Any) -> dict:
        """Unsigned transaction params of `fn(*args)` from `sender` (an address or an account)."""
        entry = self._entry(fn)
        if _is_view(entry):
            raise ChainError(f"{self.artifact}.{fn} is a view function: call it instead")
        frm = sender.address if isinstance(sender, LocalAccount) else to_checksum_address(sender)
        data = self.contract.encode_abi(fn, args=self._args(entry, args, kwargs))
        if self._chain_id is None:
            self._chain_id = self.w3.eth.chain_id  # fixed for a Web3's lifetime; saves an RPC per tx
        return {"from": frm, "to": self.address, "data": data, "value": 0, "chainId": self._chain_id}

    def send(self, account: LocalAccount, fn: str, *args: Any, **kwargs: Any) -> TxReceipt:
        """Send `fn(*args)` signed by `account` and wait for it (chain.send.send_tx)."""
        if not isinstance(account, LocalAccount):
            raise ChainError(
                f"{self.artifact}.{fn} sends a transaction: the first argument must be the "
                f"signing account (LocalAccount), got {type(account).__name__}"
            )
        return send_tx(self.w3, account, self.build(account, fn, *args, **kwargs))

    # -- events (chain.events.EventDecoder, the one decoder)
    def event_topics(self) -> list[bytes]:
        return [bytes(HexBytes(t)) for t in self._events.topics()]

    def event_topic(self, name: str) -> str:
        """topic0 (hex) of the event `name`, to filter eth_getLogs."""
        try:
            return self._events.topic(name)
        except EventDecodeError:
            raise ChainError(f"{self.artifact} has no decoded event {name!r}") from None

    def decode_log(self, log: Mapping[str, Any]) -> Event | None:
        """This contract's event in `log`, None for other logs."""
        return self._events.decode(log)


class UsageEscrowBinding(ContractBinding):
    """UsageEscrow, plus signing a signer's proof. Accounts are per (payer, node): every deposit,
    thaw and withdrawal names the node."""

    def signer_proof(self, payer: str, signer_key: Any, deadline: int | None = None) -> tuple[str, int, int, bytes]:
        """(signer address, deadline, nonce, proof) for `payer` to authorize the key `signer_key` next
        (the nonce is the key's authorizations so far, read from the chain); the deadline defaults to an
        hour after the latest block."""
        if deadline is None:
            deadline = int(self.w3.eth.get_block("latest")["timestamp"]) + SIGNER_PROOF_TTL_S
        if self._chain_id is None:
            self._chain_id = self.w3.eth.chain_id
        signer = address_of(signer_key)
        nonce = self.signer_of(signer).nonce
        proof = sign_signer_proof(payer, deadline, nonce, signer_key, self._chain_id, self.address)
        return signer, deadline, nonce, proof

    def authorize_signer_key(self, account: LocalAccount, signer_key: Any, deadline: int | None = None) -> TxReceipt:
        """Authorize the key `signer_key` for `account` when both keys are at hand (signs the proof)."""
        signer, deadline, _, proof = self.signer_proof(account.address, signer_key, deadline)
        return self.send(account, "authorizeSigner", signer, deadline, proof)


class AttributionPoolBinding(ContractBinding):
    """AttributionPool, with `settle` taking (datasetId, contributionId, weight) entries: they are
    packed into the contract's one-word-per-entry format (chain.attribution_entries) here."""

    def settle(self, account: LocalAccount, seq: int, entries: Iterable[AttributionEntry]) -> TxReceipt:
        return self.send(account, "settle", seq, attribution_entries.pack(entries))

    def build_settle(self, sender: Sender, seq: int, entries: Iterable[AttributionEntry]) -> dict:
        return self.build(sender, "settle", seq, attribution_entries.pack(entries))


class Contracts:
    """The deployed set, bound to one Web3: `.token .datasets .adapters .nodes .escrow .receipts .vault .pool`."""

    token: ContractBinding
    datasets: ContractBinding
    adapters: ContractBinding
    nodes: ContractBinding
    escrow: UsageEscrowBinding
    receipts: ContractBinding
    vault: ContractBinding
    pool: ContractBinding

    def __init__(self, w3: Web3, deployment: Deployment):
        chain_id = w3.eth.chain_id
        if chain_id != deployment.chain_id:
            raise ChainError(f"deployment is for chain {deployment.chain_id}, RPC is chain {chain_id}")
        a = deployment.addresses
        self.w3 = w3
        self.deployment = deployment
        self.chain_id = chain_id
        self.token = ContractBinding(w3, a["PaymentToken"], "DemoToken")  # the ERC20 part is what we use
        self.datasets = ContractBinding(w3, a["DatasetRegistry"], "DatasetRegistry")
        self.adapters = ContractBinding(w3, a["AdapterRegistry"], "AdapterRegistry")
        self.nodes = ContractBinding(w3, a["NodeRegistry"], "NodeRegistry")
        self.escrow = UsageEscrowBinding(w3, a["UsageEscrow"], "UsageEscrow")
        self.receipts = ContractBinding(w3, a["ReceiptLog"], "ReceiptLog")
        self.vault = ContractBinding(w3, a["RewardVault"], "RewardVault")
        self.pool = AttributionPoolBinding(w3, a["AttributionPool"], "AttributionPool")
        self._by_address = {
            b.address: b
            for b in (self.token, self.datasets, self.adapters, self.nodes, self.escrow, self.receipts, self.vault, self.pool)
        }

    def addresses(self) -> list[str]:
        """Addresses to pass to eth_getLogs."""
        return list(self._by_address)

    def event_topics(self) -> list[str]:
        """topic0 values (hex) of every event the bindings decode, for eth_getLogs."""
        seen: dict[bytes, None] = {}
        for b in self._by_address.values():
            for t in b.event_topics():
                seen[t] = None
        return ["0x" + t.hex() for t in seen]

    def decode_events(self, logs: Iterable[Mapping[str, Any]]) -> list[Event]:
        """Decode logs of the deployed contracts into event dataclasses; other logs are skipped."""
        out: list[Event] = []
        for log in logs:
            b = self._by_address.get(to_checksum_address(log["address"]))
            if b is None:
                continue
            ev = b.decode_log(log)
            if ev is not None:
                out.append(ev)
        return out

    def events_of(self, receipt: TxReceipt) -> list[Event]:
        """Decoded events of one transaction receipt."""
        return self.decode_events(receipt["logs"])
