"""Model access: the LLMClient protocol, provider adapters and cassettes."""
