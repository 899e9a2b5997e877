-- The plan a request was billed under (issue 18: margin by plan). Stamped from the user's
-- subscription when the usage recorder writes the row, so a later plan change does not
-- move old costs to the new plan. NULL on rows written before this migration: the margin
-- report counts those under the user's current plan and says so.

ALTER TABLE usage_logs ADD COLUMN plan TEXT;
