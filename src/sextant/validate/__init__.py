"""Validation: the published-run ledger, predictions against it, and the error report."""
