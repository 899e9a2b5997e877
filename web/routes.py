"""Every URL of the site and its JSON API, in one table (the Pages contract of INTERFACE.md)."""

from __future__ import annotations

from aiohttp import web

from gateway.paths import GOOGLE_CALLBACK
from web import admin, api, auth, dashboard, pages, payment, remote


def add_routes(app: web.Application) -> None:
    r = app.router
    # public
    r.add_get("/", pages.home, name="home")
    r.add_get("/pricing", pages.pricing, name="pricing")
    r.add_get("/docs", pages.docs, name="docs")
    r.add_get("/blog", pages.blog_index, name="blog")
    r.add_get("/blog/{slug}", pages.blog_post, name="blog_post")
    r.add_get("/sitemap.xml", pages.sitemap)
    r.add_get("/robots.txt", pages.robots)
    # accounts
    r.add_get("/login", auth.login_page, name="login")
    r.add_post("/login", auth.login_submit)
    r.add_post("/logout", auth.logout, name="logout")
    r.add_get("/register", auth.register_page, name="register")
    r.add_post("/register", auth.register_submit)
    r.add_get("/register/verify", auth.verify_page, name="verify")
    r.add_post("/register/verify", auth.verify_submit)
    r.add_post("/register/resend", auth.resend_submit)
    r.add_get("/login/google", auth.google_start)
    r.add_post(GOOGLE_CALLBACK, auth.google_callback)
    r.add_get("/login/google/finish", auth.google_finish)
    # signed in
    r.add_get("/dashboard", dashboard.dashboard_page, name="dashboard")
    r.add_get("/dashboard/fragments/{name}", dashboard.dashboard_fragment)
    r.add_post("/dashboard/keys", dashboard.create_key)
    r.add_post("/dashboard/keys/{key_id}/revoke", dashboard.revoke_key)
    r.add_get("/settings", dashboard.settings_page, name="settings")
    r.add_post("/settings/name", dashboard.change_name)
    r.add_post("/settings/password", dashboard.change_password)
    r.add_post("/settings/delete", dashboard.delete_account)
    r.add_get("/orders", dashboard.orders_page, name="orders")
    r.add_get("/billing", payment.billing_page, name="billing")
    r.add_post("/billing/checkout", payment.checkout)
    r.add_get("/billing/orders/{out_trade_no}", payment.order_page)
    r.add_get("/billing/orders/{out_trade_no}/status", payment.order_status_fragment)
    r.add_get("/remote", remote.sessions_page, name="remote")
    r.add_get("/remote/{session_id}", remote.terminal_page)
    r.add_post("/remote/{session_id}/end", remote.end_session)
    # admins
    r.add_get("/admin", admin.overview_page, name="admin")
    r.add_get("/admin/fragments/{name}", admin.overview_fragment)
    r.add_get("/admin/users", admin.users_page, name="admin_users")
    r.add_post("/admin/users/{user_id}/status", admin.user_status)
    r.add_post("/admin/users/{user_id}/plan", admin.user_plan)
    r.add_get("/admin/costs", admin.costs_page, name="admin_costs")
    r.add_get("/admin/outbox", admin.outbox_page, name="admin_outbox")
    r.add_get("/admin/outbox/{mail_id}", admin.outbox_message_page)
    r.add_get("/admin/audit", admin.audit_page, name="admin_audit")
    # JSON for scripts
    r.add_get("/api/auth/csrf", api.auth_csrf)
    r.add_get("/api/auth/me", api.auth_me)
    r.add_post("/api/auth/register", api.auth_register)
    r.add_post("/api/auth/verify", api.auth_verify)
    r.add_post("/api/auth/resend", api.auth_resend)
    r.add_post("/api/auth/login", api.auth_login)
    r.add_post("/api/auth/logout", api.auth_logout)
    r.add_get("/api/dashboard/overview", api.dash_overview)
    r.add_get("/api/dashboard/usage", api.dash_usage)
    r.add_get("/api/dashboard/requests", api.dash_requests)
    r.add_get("/api/dashboard/keys", api.dash_keys)
    r.add_post("/api/dashboard/keys", api.dash_create_key)
    r.add_delete("/api/dashboard/keys/{key_id}", api.dash_revoke_key)
    r.add_get("/api/dashboard/orders", api.dash_orders)
    r.add_post("/api/payment/orders", payment.api_create_order)
    r.add_get("/api/payment/orders/{out_trade_no}", payment.api_order)
    r.add_post("/api/payment/notify", payment.alipay_notify)
    r.add_get("/api/remote/sessions", remote.api_sessions)
    r.add_get("/api/remote/sessions/{session_id}", remote.api_session)
    r.add_post("/api/remote/sessions/{session_id}/end", remote.api_end_session)
    r.add_get("/api/admin/stats", api.admin_stats)
    r.add_get("/api/admin/users", api.admin_users)
    r.add_patch("/api/admin/users/{user_id}", api.admin_update_user)
    r.add_get("/api/admin/costs", api.admin_costs)
    r.add_get("/api/admin/health", api.admin_health)
    r.add_get("/api/admin/outbox", api.admin_outbox)
    r.add_get("/api/admin/audit", api.admin_audit)
