"""The LangChain surface: `ConfSpecChatModel` and what it needs to be a first-class chat model.

Messages in, turns to the engine; records out, as callbacks, streamed chunks and
`response_metadata`; tool calls, structured output, async calls and engines shared between
chat models. The only layer (with the audit trail above it) that imports LangChain.

`ConfSpecChatModel` is importable from here as it was when this was one module, so pickles
made then still load.
"""

from langchain_confspec.chat_model.model import ChatConfSpec, ConfSpecChatModel

__all__ = ["ChatConfSpec", "ConfSpecChatModel"]
