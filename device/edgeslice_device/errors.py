"""The one error type of the device runtime: every refusal the user can act on, as a one-line message."""

from __future__ import annotations


class BundleError(Exception):
    """A bundle, an image or an argument that the device runtime refuses; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
