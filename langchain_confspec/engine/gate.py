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
    """Confident verdicts stand; anything the draft is unsure of goes to the target, and so
    does a verdict the draft hardly gave (little probability on the verdict tokens)."""
    if draft_verdict.mass < config.verdict_mass_floor:
        return GateAction.ESCALATE
    if draft_verdict.accepts and draft_verdict.confidence >= config.accept_threshold:
        return GateAction.ACCEPT
    if not draft_verdict.accepts and draft_verdict.confidence >= config.reject_threshold:
        return GateAction.REJECT
    return GateAction.ESCALATE


def target_accepts(target_verdict: Verdict, config: SpecConfig) -> bool:
    """The target keeps an escalated step when its acceptance probability clears its threshold.
    A verdict it hardly gave is no acceptance: it then writes the step itself."""
    return target_verdict.mass >= config.verdict_mass_floor and target_verdict.p_accept >= config.target_accept_threshold
