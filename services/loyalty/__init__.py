"""Loyalty: Points ledger, member levels, points mall and stored value."""
