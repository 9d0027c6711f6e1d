"""Errors whose message is meant for the person using the studio (the UI shows them as they are)."""


class InputError(ValueError):
    """A request that cannot run as given. Raised before any model work; the message says what to change."""


class Cancelled(RuntimeError):
    """The user stopped the call."""
