"""The confidence gate: what to do with a step, given the draft's own verdict on it."""

from __future__ import annotations

from enum import Enum

from langchain_confspec.config import SpecConfig
from langchain_confspec.records import Verdict


class GateAction(str, Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    ESCALATE = "escalate"


def gate(draft_verdict: Verdict, config: SpecConfig) -> GateAction:
    """Confident verdicts stand; anything the draft is unsure of goes to the target."""
    if draft_verdict.accepts and draft_verdict.confidence >= config.accept_threshold:
        return GateAction.ACCEPT
    if not draft_verdict.accepts and draft_verdict.confidence >= config.reject_threshold:
        return GateAction.REJECT
    return GateAction.ESCALATE


def target_accepts(target_verdict: Verdict, config: SpecConfig) -> bool:
    """The target keeps an escalated step when its acceptance probability clears its threshold."""
    return target_verdict.p_accept >= config.target_accept_threshold
