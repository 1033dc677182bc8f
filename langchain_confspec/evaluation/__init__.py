"""Evaluation: every mode on the same problems, accuracy, speed and the draft's calibration.

Runs the engine directly (no LangChain), on built-in problems or a JSONL file, and writes
the tables and charts behind `confspec eval`.
"""
