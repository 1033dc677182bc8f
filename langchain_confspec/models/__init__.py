"""The models the engine runs on, local and served.

Loading a draft and a target (a Hugging Face id, a path, or objects already in memory),
rendering their prompts, and a session per model and call that keeps its KV cache: on the
default path, on static caches, or replayed as CUDA graphs, with the forward passes of
concurrent calls batched. A served target is the same kind of model behind an HTTP API
(llama.cpp, vLLM, SGLang). Imports nothing from the engine above it, nor LangChain.
"""
