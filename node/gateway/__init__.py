"""The `vllm` engine backend: the node as a metering gateway in front of vLLM servers.

The node keeps what is its own (chain sync, CID-verified adapters, vouchers, receipts,
attribution, settlement) and lets vLLM do the serving (tensor/pipeline parallelism, paged
attention, punica LoRA kernels, multi-node over Ray). `VllmEngine` offers the same interface as
`inference.engine.Engine`, so the API, payment and receipt code is shared by both backends:

- `upstream`: one vLLM server's state and the router (adapter affinity, least outstanding requests)
- `vllm_http`: the HTTP calls (health, models, dynamic LoRA load/unload, streamed completions)
- `usage`: the node's own token count, cross-checked with the usage vLLM reports
- `engine`: `VllmEngine` (its own event-loop thread, like the builtin engine's scheduler thread)

See docs/vllm.md for deployments.
"""

from node.gateway.engine import VllmEngine, build_vllm_engine

__all__ = ["VllmEngine", "build_vllm_engine"]
