"""The store-facing part of the suite, run again with every gateway on PostgreSQL.

`LLMAPI_TEST_STORE=postgres` makes `tests.helpers.gateway.make_config` give each gateway a
fresh database on the shared real PostgreSQL cluster instead of a SQLite file. Tests that
open the SQLite file itself (`db.path`, `db.conn`) or restart a gateway expecting the same
file are SQLite-specific and left out by name; everything else must pass unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.gateway import ROOT

MODULES = ["tests/accounting/test_limits.py", "tests/billing/test_payments.py",
           "tests/web/test_site_admin.py", "tests/web/test_site_dashboard.py"]
SQLITE_ONLY = ["test_period_rollover_resets_usage",
               "test_clean_shutdown_with_full_queue_loses_no_row",
               "test_full_purchase_upgrades_plan_and_raises_quota_at_once",
               "test_twenty_concurrent_duplicate_notifies_extend_once",
               "test_free_or_unknown_plan_cannot_be_bought",
               "test_a_refused_precreate_closes_the_order_and_says_so",
               "test_orders_page_lists_the_users_orders"]


def test_store_facing_tests_pass_on_postgresql() -> None:
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-x",
           "-p", "no:cacheprovider", *MODULES,
           "-k", " and ".join(f"not {name}" for name in SQLITE_ONLY)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "LLMAPI_TEST_STORE": "postgres"})
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
