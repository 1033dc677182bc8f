"""The audit trail once answers are written: logs of every step, their HTML report, step tables.

`ConfSpecAuditHandler` writes the records the chat model's callbacks carry to rotating JSON
Lines files; `confspec report` and `confspec run --verbose` read them back.
"""
