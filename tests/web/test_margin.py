"""The margin report: paid orders (CNY) against upstream cost converted at the operator's
rates, by day and by plan, on /admin/margin and in its CSV, checked against seeded data
whose sums are worked out by hand below (not by the code under test)."""

from __future__ import annotations

import csv
import io
import time
from datetime import date
from decimal import Decimal
from typing import Any

import aiohttp

from gateway.accounts.users import create_user, set_plan
from gateway.reports.margin import margin_report
from gateway.testing.usage_seed import SyntheticRequest, insert_synthetic_usage
from tests.helpers.gateway import Gateway, GatewayFactory
from tests.helpers.site import MESSAGE, signed_in

DAY = 86400
NOON = (int(time.time()) // DAY) * DAY + DAY // 2   # today, 12:00 UTC
RATES = {"site": {"exchange_rates": {"USD": 7.1}}}


async def order(gw: Gateway, no: str, user_id: int, plan: str, amount: str,
                paid_days_ago: float | None) -> None:
    created = NOON - (paid_days_ago or 0) * DAY - 60
    await gw.db.execute("order_insert", {"out_trade_no": no, "user_id": user_id,
                                         "plan": plan, "amount": amount, "subject": plan,
                                         "now": created})
    if paid_days_ago is not None:
        await gw.db.execute("order_mark_paid", {"out_trade_no": no, "trade_no": "T" + no,
                                                "now": NOON - paid_days_ago * DAY})


async def refund(gw: Gateway, no: str, amount: str, done_days_ago: float) -> None:
    await gw.db.execute("refund_insert", {"out_trade_no": no, "out_request_no": "R" + no,
                                          "amount": amount, "reason": "test", "actor_id": None,
                                          "now": NOON - done_days_ago * DAY})
    await gw.db.execute("refund_mark_done", {"out_request_no": "R" + no,
                                             "now": NOON - done_days_ago * DAY})


def used(days_ago: float, cost: float, currency: str) -> SyntheticRequest:
    return SyntheticRequest(input_tokens=1000, output_tokens=100, days_ago=days_ago,
                            cost=cost, currency=currency)


async def seed(gw: Gateway) -> None:
    a = await create_user(gw.db, "a@example.com", plan="starter")
    b = await create_user(gw.db, "b@example.com", plan="pro")
    c = await create_user(gw.db, "c@example.com", plan="pro")
    await order(gw, "O1", a, "starter", "9.00", 1)
    await order(gw, "O2", b, "pro", "29.00", 2)
    await order(gw, "O3", b, "pro", "29.00", 0)
    await refund(gw, "O3", "10.00", 0)
    await order(gw, "O4", c, "team", "99.00", 0)
    await order(gw, "O5", c, "team", "99.00", None)    # never paid: no revenue
    await order(gw, "O6", a, "starter", "9.00", 40)    # paid before the 30-day window
    await insert_synthetic_usage(gw.db, a, None, [used(1, 0.5, "CNY"), used(1, 0.25, "USD")],
                                 now=NOON)
    await insert_synthetic_usage(gw.db, b, None, [used(0, 1.2, "CNY"), used(2, 0.1, "EUR")],
                                 now=NOON)
    await insert_synthetic_usage(gw.db, c, None, [used(0, 2.0, "USD")], now=NOON)
    await set_plan(gw.db, "c@example.com", "team")  # the cost above stays with pro
    await insert_synthetic_usage(gw.db, c, None, [used(0, 1.0, "CNY")], now=NOON)
    await insert_synthetic_usage(gw.db, a, None, [used(45, 5.0, "CNY")], now=NOON)  # too old


# Worked out by hand: USD at 7.1, EUR has no rate (0.1 EUR is left out and listed).
EXPECTED_PLANS = {  # plan: (orders, revenue, refunds, cost in yuan, margin)
    "starter": (1, "9.00", "0", "2.275", "6.725"),        # 0.5 + 0.25 * 7.1
    "pro": (2, "58.00", "10.00", "15.4", "32.6"),         # 1.2 + 2.0 * 7.1; 48 net
    "team": (1, "99.00", "0", "1.0", "98.0"),
}
EXPECTED_DAYS = {0: (2, "128.00", "10.00", "16.4", "101.6"),  # O3 + O4; 1.2 + 14.2 + 1.0
                 1: (1, "9.00", "0", "2.275", "6.725"),
                 2: (1, "29.00", "0", "0", "29.00")}        # + 0.1 EUR without a rate
EXPECTED_TOTAL = (4, "166.00", "10.00", "18.675", "137.325")


def figures(line: Any) -> tuple[int, Decimal, Decimal, Decimal, Decimal]:
    return (line.orders, line.revenue, line.refunds, line.cost, line.margin)


def expected(values: tuple[int, str, str, str, str]) -> tuple[int, Decimal, ...]:
    return (values[0], *(Decimal(v) for v in values[1:]))


async def test_sums_by_plan_and_day_match_the_seeded_orders_and_usage(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(RATES)
    await seed(gw)
    report = await margin_report(gw.db, {"USD": 7.1}, days=30, now=NOON)
    assert {p.label: figures(p) for p in report.plans} == {
        k: expected(v) for k, v in EXPECTED_PLANS.items()}
    assert [p.label for p in report.plans] == ["team", "pro", "starter"]  # by net revenue
    today = NOON // DAY
    days = {today - _day_number(d.label): d for d in report.days}  # days ago -> line
    assert len(report.days) == 30 and list(days) == list(range(30))  # newest first
    for ago, values in EXPECTED_DAYS.items():
        assert figures(days[ago]) == expected(values), ago
    quiet = [d for ago, d in days.items() if ago > 2]
    assert all(figures(d) == (0, 0, 0, 0, 0) for d in quiet)
    assert figures(report.total) == expected(EXPECTED_TOTAL)
    assert report.total.requests == 6
    assert report.rates == {"USD": Decimal("7.1")}
    assert report.missing_rates == {"EUR": 0.1}
    assert report.plans[1].unconverted == {"EUR": 0.1}
    assert report.plans[1].margin_percent == Decimal("67.9")   # 32.6 / 48
    assert report.plan_guessed == 0

    # a week leaves out day 40 and 45 anyway; one day keeps only today
    one = await margin_report(gw.db, {"USD": 7.1}, days=1, now=NOON)
    assert figures(one.total) == expected(EXPECTED_DAYS[0])
    # without the USD rate its cost is left out and listed, never counted at 1:1
    bare = await margin_report(gw.db, {}, days=30, now=NOON)
    assert bare.total.cost == Decimal("2.7") and bare.missing_rates == {"EUR": 0.1,
                                                                        "USD": 2.25}


def _day_number(label: str) -> int:
    return (date.fromisoformat(label) - date(1970, 1, 1)).days


async def test_the_page_and_the_csv_show_the_same_sums_in_both_languages(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(RATES)
    await seed(gw)
    admin = await signed_in(gw, "boss@example.com", admin=True)
    try:
        for lang, words in (("en", ("Margin", "1 USD = ¥7.1", "By plan", "0.1000 EUR")),
                            ("zh-CN", ("毛利", "1 USD = ¥7.1", "按套餐", "0.1000 EUR"))):
            status, html, _ = await admin.get(f"/admin/margin?days=30&lang={lang}")
            assert status == 200, html
            for word in words:
                assert word in html, (lang, word)
            foot = html[html.index("<tfoot>"):html.index("</tfoot>")]
            assert "¥166.00" in foot and "−¥10.00" in foot and "¥137.33" in foot, foot
        status, body, headers = await admin.get("/admin/export/margin.csv?by=plan&days=30")
        assert status == 200 and headers["Content-Type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(body.lstrip("\ufeff"))))
        assert rows[0][:8] == ["plan", "orders", "revenue_cny", "refunds_cny",
                               "net_revenue_cny", "cost_cny", "margin_cny", "margin_percent"]
        table = {r[0]: r for r in rows[1:]}
        assert table["pro"][1:8] == ["2", "58.00", "10.00", "48.00", "15.4000", "32.6000",
                                     "67.9"]
        assert table["pro"][9] == "0.100000 EUR"
        assert table["total"][1:7] == ["4", "166.00", "10.00", "156.00", "18.6750",
                                       "137.3250"]
        status, body, _ = await admin.get("/admin/export/margin.csv?by=day&days=7")
        rows = list(csv.reader(io.StringIO(body.lstrip("\ufeff"))))
        assert rows[0][0] == "day" and len(rows) == 1 + 7 + 1  # header, 7 days, total
        assert [r[0] for r in rows[1:-1]] == sorted(r[0] for r in rows[1:-1])  # oldest first
        assert rows[-1][2] == "166.00"
        # the JSON twin: the same figures as decimal strings
        status, data = await admin.json("GET", "/api/admin/margin?days=30")
        assert status == 200 and data["currency"] == "CNY"
        assert data["exchange_rates"] == {"USD": "7.1"} and data["missing_rates"] == {
            "EUR": 0.1}
        assert {k: data["total"][k] for k in ("orders", "revenue", "refunds", "cost",
                                              "margin")} == {
            "orders": 4, "revenue": "166.00", "refunds": "10.00", "cost": "18.6750",
            "margin": "137.3250"}
        assert [p["label"] for p in data["plans"]] == ["team", "pro", "starter"]
        assert len(data["days"]) == 30
        # customers never see it
        customer = await signed_in(gw, "someone@example.com")
        try:
            for path in ("/admin/margin", "/admin/export/margin.csv", "/api/admin/margin"):
                status, _, _ = await customer.get(path)
                assert status == 403, path
        finally:
            await customer.close()
    finally:
        await admin.close()


async def test_real_requests_keep_the_plan_they_were_billed_under(
        gateway_factory: GatewayFactory) -> None:
    """Through /v1/messages: the recorder stamps the plan, a later change does not move it."""
    gw = await gateway_factory({**RATES, "providers": [{
        "name": "demo", "protocol": "demo", "currency": "USD",
        "pricing": {"default": {"input": 1000.0, "output": 1000.0}}}]})
    key = await gw.new_key("billed@example.com", plan="pro")
    async with aiohttp.ClientSession() as http:
        async def call() -> None:
            async with http.post(gw.url + "/v1/messages", json=MESSAGE,
                                 headers={"x-api-key": key}) as r:
                assert r.status == 200, await r.text()
        await call()
        await gw.recorder.flush()
        await set_plan(gw.db, "billed@example.com", "team")
        await call()
        await gw.recorder.flush()
    report = await margin_report(gw.db, {"USD": 7.1}, days=1)
    by_plan = {p.label: p for p in report.plans}
    assert set(by_plan) == {"pro", "team"}
    assert by_plan["pro"].requests == 1 and by_plan["team"].requests == 1
    assert by_plan["pro"].cost > 0 and report.rates == {"USD": Decimal("7.1")}
