"""Generator service: text generation with continuous (iteration-level) batching, a KV cache and streaming."""
