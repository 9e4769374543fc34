"""Dev tools: `loranode dev up`, the demo and dev-chain helpers. Never imported by the daemon."""
