"""The per-guild quota ledger: reserve before a provider call, settle or refund after."""

from bot.quota.base import Ledger, Reservation, UnlimitedLedger
from bot.quota.costs import CostTable, UnknownCostTier
from bot.quota.models import (
    Balance,
    Balances,
    Ban,
    Grant,
    GuildConfig,
    JobInfo,
    ResetMarker,
    ThresholdEvent,
    UsageRow,
)
from bot.quota.service import QuotaPolicy, QuotaService, open_ledger, store_for, store_for_url
from bot.quota.sqlite_store import SqliteLedgerStore
from bot.quota.store import LedgerStore, LedgerTx

__all__ = [
    "Balance",
    "Balances",
    "Ban",
    "CostTable",
    "Grant",
    "GuildConfig",
    "JobInfo",
    "Ledger",
    "LedgerStore",
    "LedgerTx",
    "QuotaPolicy",
    "QuotaService",
    "Reservation",
    "ResetMarker",
    "SqliteLedgerStore",
    "ThresholdEvent",
    "UnknownCostTier",
    "UnlimitedLedger",
    "UsageRow",
    "open_ledger",
    "store_for",
    "store_for_url",
]
