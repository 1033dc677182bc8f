"""Retrieval-augmented answering on the bundled demo pair, with the per-step audit.

Facts live in an in-memory vector store under a small local embedding (hashed bag of
words: no download, no network). The chain retrieves the facts about the question's
subject, puts them before the question, and the model reasons over them step by step.

    python examples/rag_chain.py [--question "..."]
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_confspec import ConfSpecChatModel, StepRecord
from langchain_confspec.audit.display import format_step_table

FACTS = [
    "Zoe has 34 stamps.",
    "Leo has 18 coins.",
    "Ivy has 52 books.",
    "Max has 9 eggs.",
    "Eva has 41 pens.",
]
QUESTION = "Leo finds 27 more. Then Leo has twice as many. How many coins does Leo have now?"


class HashedWordEmbeddings(Embeddings):
    """Bag-of-words vectors, each word hashed into one of `size` buckets, L2-normalised."""

    def __init__(self, size: int = 256) -> None:
        self.size = size

    def _embed(self, text: str) -> list[float]:
        vector = [0.0] * self.size
        for word in re.findall(r"[a-z]+", text.lower()):
            vector[int(hashlib.sha1(word.encode()).hexdigest(), 16) % self.size] += 1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._embed(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._embed(text)


def build_chain(model: ConfSpecChatModel):  # type: ignore[no-untyped-def]
    store = InMemoryVectorStore.from_documents([Document(fact) for fact in FACTS], HashedWordEmbeddings())
    retriever = store.as_retriever(search_kwargs={"k": 1})
    prompt = ChatPromptTemplate.from_messages([("human", "{context} {question}")])
    join = RunnableLambda(lambda docs: " ".join(d.page_content for d in docs))
    return {"context": retriever | join, "question": RunnablePassthrough()} | prompt | model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", default=QUESTION)
    args = parser.parse_args()

    message = build_chain(ConfSpecChatModel.demo(max_tokens=128)).invoke(args.question)
    records = [StepRecord.model_validate(s) for s in message.response_metadata["confspec"]["steps"]]
    print(f"Question: {args.question}\n\nAnswer:\n{message.content}\n")
    print(format_step_table(records))


if __name__ == "__main__":
    main()
