"""Errors whose message is meant for the person using the studio: the UI shows them as they are."""


class StudioError(Exception):
    """Base of the errors a person can act on."""


class InputError(StudioError, ValueError):
    """A request that cannot run as given. Raised before any model work; the message says what to change."""


class WeightsError(StudioError, RuntimeError):
    """Model files that are missing, incomplete or not what they claim to be."""


class Cancelled(StudioError):
    """The user stopped the call."""
