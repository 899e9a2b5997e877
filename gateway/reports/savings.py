"""What a plan saves against paying Anthropic's list price for the same tokens (the landing page).

The figures come from the live `plans` rows, never from copy in a template: change a plan
in the config and the landing page follows. The comparison is deliberately conservative and
stated on the page in full:

- Anthropic's published API price for Claude Sonnet 4.5 is US$3 per million input tokens and
  US$15 per million output tokens (https://www.anthropic.com/pricing, "API" section; the same
  figures are in Anthropic's model overview in its API docs).
- Every token of a plan is priced at the *input* rate, the cheaper one. Claude Code sends far
  more input than it receives, but every output token would cost five times as much, so the
  real difference is larger than the one shown.
- Dollars become yuan at a fixed, stated rate (US$1 = ¥7.10, close to the 2025-2026 range);
  the page names the rate so a reader can redo the sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

COMPARED_MODEL = "Claude Sonnet 4.5"
INPUT_USD_PER_MTOK = Decimal("3")
OUTPUT_USD_PER_MTOK = Decimal("15")
CNY_PER_USD = Decimal("7.10")
SOURCE_URL = "https://www.anthropic.com/pricing"


@dataclass(frozen=True, slots=True)
class PlanSaving:
    """One paid plan with a monthly token allowance, next to its list-price equivalent."""

    name: str
    price: Decimal            # per month, CNY
    monthly_tokens: int
    list_price: Decimal       # the same tokens at the Anthropic input rate, CNY
    saving: Decimal           # list_price - price (never negative: see `savings`)
    percent: int              # saving / list_price, whole per cent


def _yuan(value: Decimal) -> Decimal:
    return value.quantize(Decimal("1"), rounding=ROUND_HALF_UP)


def list_price_cny(tokens: int) -> Decimal:
    """`tokens` at Anthropic's input rate, in yuan (rounded to whole yuan)."""
    return _yuan(Decimal(tokens) / Decimal(1_000_000) * INPUT_USD_PER_MTOK * CNY_PER_USD)


def savings(plans: list[dict[str, Any]]) -> list[PlanSaving]:
    """Paid plans with a token allowance that cost less than their list-price equivalent.
    A plan that would not save anything is left out rather than shown as a negative saving:
    the page only claims what the figures carry."""
    rows = []
    for plan in plans:
        price = Decimal(str(plan["price_month"]))
        tokens = int(plan["monthly_tokens"] or 0)
        if price <= 0 or tokens <= 0:
            continue
        list_price = list_price_cny(tokens)
        if list_price <= price:
            continue
        saving = list_price - price
        percent = int((saving * 100 / list_price).to_integral_value(rounding="ROUND_FLOOR"))
        rows.append(PlanSaving(str(plan["name"]), price, tokens, list_price, saving, percent))
    return rows


def recommended(plans: list[dict[str, Any]], configured: str = "") -> str:
    """The plan marked "recommended": `[site] recommended_plan`, else the middle paid plan
    (the one most customers of a three-tier price list pick), else none."""
    names = [str(p["name"]) for p in plans]
    if configured and configured in names:
        return configured
    paid = [str(p["name"]) for p in plans if Decimal(str(p["price_month"])) > 0]
    return paid[len(paid) // 2] if paid else ""
