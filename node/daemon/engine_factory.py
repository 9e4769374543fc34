"""Build the inference engine from the node's configuration."""

from __future__ import annotations

from node.config import NodeConfig


def engine_config(config: NodeConfig):
    from inference.engine import EngineConfig

    return EngineConfig(
        base_model=str(config.base_model_path) if config.base_model_path else None,
        model_id=config.base_model_id,
        device=None if config.engine_device == "auto" else config.engine_device,
        num_slots=config.engine_gpu_slots,
        host_cache_size=config.engine_host_cache,
        max_rank=config.engine_max_rank,
        max_batch_size=config.engine_max_batch,
        max_queue=config.engine_max_queue,
        idle_batch_window_ms=config.engine_idle_batch_ms,
        cpu_packed_linears=config.engine_cpu_packed_linears,
        max_new_tokens=config.max_tokens_limit,
        max_model_len=max(1024, min(2048, config.max_tokens_limit * 2)),
    )


def build_engine(config: NodeConfig):
    """A started engine (loads the base model: seconds for the embedded one once cached), or with
    engine_backend = "vllm" the gateway in front of `vllm_urls` (node.gateway)."""
    if config.engine_backend == "vllm":
        from node.gateway import build_vllm_engine

        return build_vllm_engine(config)
    from inference.engine import Engine

    return Engine(engine_config(config)).start()
