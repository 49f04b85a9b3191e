"""The error hierarchy.

Every error the bot can show a person carries ``user_message``: a sentence that
says what happened and what to do, never a secret, never a traceback. One place
(the CLI's exit path, the Discord tree's ``on_error``) turns these into output.
"""

from __future__ import annotations

from datetime import datetime


def failure_text(words: str) -> str:
    """How a person is told that what they asked for was refused or failed: the
    same mark whichever path the words take (a command's error handler, a job's
    delivery, a notice after a restart)."""
    return f"❌ {words}"


class BotError(Exception):
    """Base class. ``user_message`` is safe to show to the person who caused it."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class ConfigError(BotError):
    """A setting is missing or invalid for what the operator asked to do."""


class UserError(BotError):
    """The request itself is wrong: shown to the requester, nothing is charged."""


class ValidationError(UserError):
    """An option is out of range or not supported by the chosen provider."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


class ImageError(UserError):
    """An input image cannot be used (type, size, corrupt data)."""

    filename: str | None = None  # which input, when the caller knows


class ProviderError(BotError):
    """A provider call failed.

    ``retryable`` says whether the same request may succeed if sent again
    (rate limits, server errors, timeouts); ``retry_after`` is the provider's hint
    in seconds, when it gave one.
    """

    retryable: bool = False

    def __init__(
        self,
        user_message: str,
        *,
        provider: str,
        status: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(user_message)
        self.provider = provider
        self.status = status
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(provider={self.provider!r}, status={self.status!r}, "
            f"retryable={self.retryable!r}, message={self.user_message!r})"
        )


class ProviderBadRequest(ProviderError):
    """HTTP 400 or an error body about the request's parameters."""


class ProviderAuthError(ProviderError):
    """401/403: the operator's key is wrong or the plan does not allow this."""


class ProviderCreditsError(ProviderError):
    """402: the operator's provider account has run out of credits."""


class ProviderNotFound(ProviderError):
    """404: model or job not found."""


class ReferenceFetchError(ProviderError):
    """The provider could not download a reference image from its URL."""


class ProviderRateLimited(ProviderError):
    """429: too many requests or too many queued jobs."""

    retryable = True


class ProviderUnavailable(ProviderError):
    """5xx, connection failure or timeout: may work if tried again."""

    retryable = True


class ProviderBadResponse(ProviderError):
    """The provider answered with something that is not a documented response."""

    retryable = True


class GenerationFailed(ProviderError):
    """The provider accepted the job but reported that generation failed."""


class JobDeadlineExceeded(ProviderError):
    """A queued job did not finish within the overall deadline."""


class JobNotResumable(ProviderError):
    """After a restart, a job whose provider job is unknown cannot be finished."""


class DeliveryError(BotError):
    """Results could not be delivered (upload rejected, disk full, ...)."""


class QuotaRefused(UserError):
    """The quota ledger refused a reservation.

    ``limit`` names the limit that refused (``ban``, ``cooldown``, ``in_flight``,
    ``user_allowance``, ``guild_pool``, ``global_budget``); ``remaining`` and
    ``resets_at`` (aware datetime) tell the member where they stand.
    """

    def __init__(
        self,
        user_message: str,
        *,
        limit: str,
        remaining: int | None = None,
        resets_at: datetime | None = None,
    ) -> None:
        super().__init__(user_message)
        self.limit = limit
        self.remaining = remaining
        self.resets_at = resets_at


class JobCancelled(BotError):
    """The requester or a moderator cancelled the job before it delivered."""


class LeaseLost(Exception):
    """Another process adopted this job (its owner's lease had run out): this
    process must stop working on it without a word or a refund; the adopter
    finishes it. Not a ``BotError``: nothing is ever shown for it."""


class ContentFlagged(UserError):
    """The provider flagged a result as NSFW where it may not be posted."""
