"""The payer side: the OpenAI client with automatic vouchers (`payer.py`) and `loranode chat` (`chat/`)."""
