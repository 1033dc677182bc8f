"""The step engine: one answer, step by step.

The draft writes a step, judges it, and the gate decides who verifies it; the target checks
uncertain steps and rewrites the ones it rejects, token speculation speeding up its own
writing. Steps become `StepRecord`s. Runs on the sessions of `langchain_confspec.models`;
imports no LangChain (the chat model above turns messages into turns and records into
callbacks).
"""
